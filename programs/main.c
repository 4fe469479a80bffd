/* The cinfer command line: the dispatcher, and the usage, put together from each command's part.
 *
 *   cinfer inspect --model DIR                                            (programs/inspect.c)
 *   cinfer run --model DIR (--tokens "1 15 7" | --prompt TEXT | --chat TEXT) [options]
 *                                                                         (programs/run.c)
 *   cinfer bench --model DIR [-p 512] [-n 128] [options]                  (programs/bench.c)
 *   cinfer tokenize --model DIR [--text TEXT | < file] [--ids] [--no-special]
 *                                                                         (programs/tokenize.c)
 *   cinfer compare --model DIR --tokens "1 15 7" [--dtype D] [--attn A] [--device N]
 *                                                                         (programs/compare.c)
 *   cinfer serve --model DIR [--port 8000] [options]    (programs/serve.c, where libmicrohttpd is)
 *
 * Errors go to stderr as one line naming what was wrong, with exit status 1 (2 for misuse). */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "program.h"

/* The command list, in the order the usage lists them. */
static const program_command *const commands[] = {
    &inspect_command, &run_command, &bench_command, &tokenize_command, &compare_command,
#ifdef CINFER_HAVE_SERVER /* built where libmicrohttpd is (CMakeLists.txt, CINFER_SERVER) */
    &serve_command,
#endif
};
/* Their option sections, in the order the usage gives them: compare's and serve's refer to run's
 * above them. */
static const program_command *const option_sections[] = {
    &run_command, &compare_command, &tokenize_command,
#ifdef CINFER_HAVE_SERVER
    &serve_command,
#endif
};

static void print_usage(FILE *out) {
    fputs("usage: cinfer <command> [options]\n\ncommands:\n", out);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fputs(commands[i]->synopsis, out);
    for (size_t i = 0; i < sizeof option_sections / sizeof option_sections[0]; i++) {
        fputs("\n", out);
        fputs(option_sections[i]->options, out);
    }
    fputs("\ntensor-parallel ranks (run, bench, serve, compare with --tp N):\n", out);
    fputs(tp_launch_usage, out);
}

int main(int argc, char **argv) {
    program_set_usage(print_usage);
    program_set_argv(argc, argv);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        print_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i]->name) == 0) return commands[i]->main(argc - 2, argv + 2);
#ifndef CINFER_HAVE_SERVER
    if (strcmp(argv[1], "serve") == 0) {
        fprintf(stderr, "cinfer: error: this cinfer was built without `serve`: it needs "
                        "libmicrohttpd (Debian: libmicrohttpd-dev) when CMake runs\n");
        return EXIT_ERROR;
    }
#endif
    return usage_error("unknown command '%s'", argv[1]);
}
