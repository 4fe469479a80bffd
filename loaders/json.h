#ifndef CINFER_JSON_H
#define CINFER_JSON_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "../include/cinfer.h"

/* Parses exactly one JSON value from text[0, length) with cJSON. Anything but whitespace after the
 * value is an error (cJSON alone would stop there and say nothing). Messages start with `name`. */
cinfer_status ci_json_parse(const char *name, const char *text, size_t length, cJSON **out);

#endif
