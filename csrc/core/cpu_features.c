/* Run-time CPU feature checks with the SCALEML_NO_SIMD override. See cpu_features.h. */
#include "core/cpu_features.h"

#include <stdlib.h>
#include <string.h>

/* Read once; an atomic cache, as the kernels may run on several threads. */
static int simd_allowed(void)
{
    static _Atomic int allowed = -1;
    int a = allowed;
    if (a < 0) {
        const char *e = getenv("SCALEML_NO_SIMD");
        a = !(e && *e && strcmp(e, "0") != 0);
        allowed = a;
    }
    return a;
}

#if defined(__x86_64__) && defined(__GNUC__)
int scaleml_cpu_avx2(void) { return simd_allowed() && __builtin_cpu_supports("avx2"); }
int scaleml_cpu_bmi2(void) { return simd_allowed() && __builtin_cpu_supports("bmi2"); }
int scaleml_cpu_f16c(void)
{
    return simd_allowed() && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
}
int scaleml_cpu_avx512f(void) { return simd_allowed() && __builtin_cpu_supports("avx512f"); }
#else
int scaleml_cpu_avx2(void) { return 0; }
int scaleml_cpu_bmi2(void) { return 0; }
int scaleml_cpu_f16c(void) { return 0; }
int scaleml_cpu_avx512f(void) { return 0; }
#endif
