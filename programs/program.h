/* What the cinfer commands share: usage errors, error exits, number and token-list parsing
 * (engine/cli.c), and the options that pick a backend (engine/cli_compare.c). */
#ifndef CINFER_CLI_UTIL_H
#define CINFER_CLI_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "cinfer.h"

/* Prints "cinfer: <fmt with arg>" and the usage text; returns the misuse exit status (2). */
int usage_error(const char *fmt, const char *arg);
/* Prints the last error; returns the error exit status (1). */
int fail(void);
/* The whole of text as an integer in [minimum, maximum]: 0, else -1. */
int parse_long(const char *text, long minimum, long maximum, long *out);
/* "1.50 GiB": bytes in the largest binary unit that keeps the number at 1 or more. */
void format_bytes(double bytes, char *buf, size_t size);
/* "1 15 7 42" -> ids (malloc'd); 0, or the exit status once the reason is printed. */
int parse_token_list(const char *text, int32_t **ids, int *n_ids);

/* --backend cpu|cuda, --dtype f32|bf16|fp16, --attn auto|eager|sdpa|flash, --device N into
 * options; 0, or the misuse exit status once the reason is printed. Whether the kind runs the
 * model is cinfer_model_load's to say. */
int parse_load_option(const char *flag, const char *value, cinfer_load_options *options);

/* cinfer compare: the GPU against the CPU reference, stage by stage. */
int cmd_compare(int argc, char **argv);

#endif
