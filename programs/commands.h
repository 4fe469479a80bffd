/* The cinfer commands, one file each, as main.c dispatches to them and prints their usage. */
#ifndef CINFER_COMMANDS_H
#define CINFER_COMMANDS_H

typedef struct program_command {
    const char *name;
    /* argv holds the options after the command's name; returns the process exit status */
    int (*main)(int argc, char **argv);
    const char *synopsis; /* its lines of the usage's command list */
    const char *options;  /* its section of the usage after that list; NULL when it has none */
} program_command;

extern const program_command inspect_command;  /* programs/inspect.c */
extern const program_command run_command;      /* programs/run.c */
extern const program_command bench_command;    /* programs/bench.c */
extern const program_command tokenize_command; /* programs/tokenize.c */
extern const program_command compare_command;  /* programs/compare.c */
extern const program_command serve_command;    /* programs/serve.c (CINFER_HAVE_SERVER) */

#endif
