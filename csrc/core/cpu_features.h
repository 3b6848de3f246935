/*
 * Run-time CPU feature checks for the hand-written SIMD paths of the
 * compression kernels and the dense scan (AVX2, BMI2, F16C, AVX-512F). Setting the environment variable
 * SCALEML_NO_SIMD (to anything but "0") before the first call forces the
 * portable code, which the tests use to check that both give identical bytes.
 * (The compiler-generated target_clones are not affected: they come from the
 * same source and give the same results.)
 */
#ifndef SCALEML_CPU_FEATURES_H
#define SCALEML_CPU_FEATURES_H

int scaleml_cpu_avx2(void);
int scaleml_cpu_bmi2(void);
int scaleml_cpu_f16c(void);
int scaleml_cpu_avx512f(void);

#endif
