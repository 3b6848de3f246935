/* The per-thread error message; see errors.h. */
#include "core/errors.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "api_collectives.h"

static _Thread_local char error_message[512];

int scaleml_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    return code;
}

const char *scaleml_error_message(void)
{
    return error_message;
}
