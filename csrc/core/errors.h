/*
 * Error codes and the per-thread error message of the whole C core.
 *
 * Every function of the core returns SCALEML_OK or one of these codes and,
 * on failure, sets a detailed message with scaleml_fail(); the Python layer
 * maps the code to an exception class with the message (scaleml/errors.py is
 * the one table of that mapping).
 */
#ifndef SCALEML_ERRORS_H
#define SCALEML_ERRORS_H

enum {
    SCALEML_OK = 0,
    SCALEML_ERR_NOMEM = 1,      /* an allocation failed */
    SCALEML_ERR_MPI = 2,        /* an MPI call failed (MPI's own error string) */
    SCALEML_ERR_MALFORMED = 3,  /* a message or compressed buffer failed validation */
    SCALEML_ERR_ARG = 4,        /* a bad argument or non-finite input */
    SCALEML_ERR_TOO_LARGE = 5,  /* an output buffer too small, or a count beyond what MPI takes */
    SCALEML_ERR_DEVICE = 6      /* a CUDA runtime call failed (no device, a launch failed; not out of memory) */
};

/* Set the detailed message returned by scaleml_error_message(); returns code. */
int scaleml_fail(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#endif
