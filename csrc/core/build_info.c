/* Facts about the build: the MPI the extension was compiled against, the compiler and its flags. */
#include <mpi.h>
#if defined(OPEN_MPI) && __has_include(<mpi-ext.h>)
#include <mpi-ext.h>
#endif
#include <stdint.h>
#include <stddef.h>

#include "api_collectives.h"

const char *scaleml_mpi_vendor(void)
{
#if defined(OPEN_MPI)
    return "Open MPI";
#elif defined(MPICH_VERSION) || defined(MPICH)
    return "MPICH";
#else
    return "unknown";
#endif
}

int scaleml_mpi_comm_handle_bytes(void) { return (int)sizeof(MPI_Comm); }

int scaleml_mpi_version(void) { return MPI_VERSION * 10 + MPI_SUBVERSION; }

int scaleml_mpi_cuda_aware(const char **how)
{
#if defined(MPIX_GPU_SUPPORT_CUDA)
    int supported = 0;
    *how = "MPIX_GPU_query_support(MPIX_GPU_SUPPORT_CUDA)";
    if (MPIX_GPU_query_support(MPIX_GPU_SUPPORT_CUDA, &supported) != MPI_SUCCESS) return -1;
    return supported ? 1 : 0;
#elif defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
    *how = "MPIX_Query_cuda_support()";
    return MPIX_Query_cuda_support() ? 1 : 0;
#elif defined(MPIX_CUDA_AWARE_SUPPORT)
    *how = "mpi-ext.h: built without CUDA support";
    return 0;
#else
    *how = "no query in this MPI's headers";
    return -1;
#endif
}

#ifndef SCALEML_BUILD_CFLAGS
#define SCALEML_BUILD_CFLAGS "unknown"
#endif

const char *scaleml_build_compiler(void)
{
#if defined(__GNUC__) && !defined(__clang__) && defined(__VERSION__)
    return "GCC " __VERSION__;
#elif defined(__VERSION__)
    return __VERSION__;
#else
    return "unknown";
#endif
}

/* The flags scaleml/_ffi_build.py passed (a -D define it sets). */
const char *scaleml_build_cflags(void) { return SCALEML_BUILD_CFLAGS; }
