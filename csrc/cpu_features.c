/* Run-time CPU feature checks with the SCALEML_NO_SIMD override. See cpu_features.h. */
#include "cpu_features.h"

#include <stdlib.h>
#include <string.h>

static int simd_allowed(void)
{
    static int allowed = -1;
    if (allowed < 0) {
        const char *e = getenv("SCALEML_NO_SIMD");
        allowed = !(e && *e && strcmp(e, "0") != 0);
    }
    return allowed;
}

#if defined(__x86_64__) && defined(__GNUC__)
int scaleml_cpu_avx2(void) { return simd_allowed() && __builtin_cpu_supports("avx2"); }
int scaleml_cpu_bmi2(void) { return simd_allowed() && __builtin_cpu_supports("bmi2"); }
int scaleml_cpu_f16c(void)
{
    return simd_allowed() && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
}
#else
int scaleml_cpu_avx2(void) { return 0; }
int scaleml_cpu_bmi2(void) { return 0; }
int scaleml_cpu_f16c(void) { return 0; }
#endif
