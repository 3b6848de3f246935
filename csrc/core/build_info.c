/* Facts about the build: the MPI the extension was compiled against. */
#include <mpi.h>
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
