/* What the cinfer commands share (programs/program.c): the exit statuses, the messages for misuse
 * and errors, and the parsers of numbers, token lists and the options that pick a backend. Each
 * command (inspect.c, run.c, tokenize.c, compare.c, bench.c) stands on this and the public API
 * and calls no other command: main.c alone dispatches to them (programs/commands.h). */
#ifndef CINFER_PROGRAM_H
#define CINFER_PROGRAM_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cinfer.h"

/* Exit statuses of every cinfer command: 0 on success, EXIT_ERROR when the work failed (a bad
 * checkpoint, an I/O error), EXIT_USAGE for misuse (an unknown option, a malformed value). */
enum { EXIT_ERROR = 1, EXIT_USAGE = 2 };

/* Sets what usage_error prints after its message: main.c's, the usage of every command. */
void program_set_usage(void (*print_usage)(FILE *out));
/* Prints "cinfer: <fmt with arg>" and the usage text to stderr; returns EXIT_USAGE. */
int usage_error(const char *fmt, const char *arg);
/* Prints the last error (and, with CINFER_DEBUG set, where it was raised); returns EXIT_ERROR. */
int fail(void);
/* The whole of text as an integer in [minimum, maximum]: 0, else -1. */
int parse_long(const char *text, long minimum, long maximum, long *out);
/* The whole of text as a number in [minimum, maximum]: 0, else -1. */
int parse_double(const char *text, double minimum, double maximum, double *out);
/* "4294967296", "4G", "512M", "64K" (powers of 1024) as bytes, at least 1: 0, else -1. */
int parse_bytes(const char *text, int64_t *out);
/* "1.50 GiB": bytes in the largest binary unit that keeps the number at 1 or more. */
void format_bytes(double bytes, char *buf, size_t size);
/* "1 15 7 42" -> ids (malloc'd); 0, or the exit status once the reason is printed. */
int parse_token_list(const char *text, int32_t **ids, int *n_ids);

/* What the bench rows call the model: the path as given minus trailing slashes, with " (random)"
 * for random weights. */
void bench_model_label(const char *path, int random_weights, char *buf, size_t size);
/* RFC 4180: text quoted, with quotes doubled, to stdout. */
void print_csv_field(const char *text);
/* Prints a cJSON array of rows (NULL: out of memory) to stdout and deletes it. */
struct cJSON;
void print_json_rows(struct cJSON *array);

/* --backend cpu|cuda, --dtype f32|bf16|fp16, --attn auto|eager|sdpa|flash (the names cinfer.h's
 * tables take, aliases included), --device N, --tp N (tensor-parallel ranks) into options; 0, or EXIT_USAGE once the reason is
 * printed. Whether the kind runs the model is cinfer_model_load's to say. */
int parse_load_option(const char *flag, const char *value, cinfer_load_options *options);

/* ---- tensor-parallel ranks as processes (docs/TENSOR_PARALLEL.md, "Launching") ----------------
 * --tp-ranks threads|processes, --tp-address HOST:PORT, --nnodes N, --node-rank K, for every
 * command that loads a model. 1 when flag is one of them (then 0, or EXIT_USAGE once the reason
 * is printed, in *status), 0 when it is not. */
int parse_tp_launch_option(const char *flag, const char *value, int *status);
/* The usage lines of those options. */
extern const char tp_launch_usage[];
/* main.c hands over argv: a worker is this program run again with the same arguments. */
void program_set_argv(int argc, char **argv);
/* 1 in a process that this program started as a tensor-parallel worker (or that --node-rank
 * K > 0 makes one): its command must not start anything of its own (a server's port) before
 * program_load_model, which never returns there. */
int program_is_tp_worker(void);
/* cinfer_model_load with the launch options: with tensor_parallel > 1 on CUDA, or --tp-ranks
 * processes, the workers of this node are started as copies of this process (stdout closed) and
 * join it; in a worker it runs the worker's life (cinfer_tp_worker_run) and exits with its status. */
cinfer_status program_load_model(const char *dir, const cinfer_load_options *options,
                                 cinfer_model **out);

#endif
