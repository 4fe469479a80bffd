/* cinfer tokenize: text (or stdin) to token ids with the checkpoint's tokenizer.json, one token
 * a line with the text it stands for, or only the ids.
 *
 *   cinfer tokenize --model DIR [--text TEXT | < file] [--ids] [--no-special] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinfer.h"
#include "commands.h"
#include "program.h"

static int tokenize_main(int argc, char **argv);
/* what main.c dispatches to and prints in the usage */
const program_command tokenize_command = {
    "tokenize", tokenize_main,
    "  tokenize --model DIR [--text TEXT]  text (or stdin) to token ids with tokenizer.json\n",
    "tokenize options (only the tokenizer files of DIR are read):\n"
    "  --text TEXT          the text (default: all of stdin)\n"
    "  --ids                print only the ids, space-separated on one line\n"
    "  --no-special         do not add BOS/EOS (the post_processor's special tokens)\n"};

/* Writes bytes so that every one shows: printable UTF-8 as it is, the rest as escapes. */
static void print_escaped(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c == '\r')
            fputs("\\r", stdout);
        else if (c == '\\')
            fputs("\\\\", stdout);
        else if (c == '"')
            fputs("\\\"", stdout);
        else if (c < 0x20 || c == 0x7F)
            printf("\\x%02X", c);
        else if (c < 0x80)
            putchar(c);
        else {
            /* a whole, valid multi-byte character prints as itself; stray bytes as \xNN */
            int need = c >= 0xF0 && c <= 0xF4 ? 3 : c >= 0xE0 && c <= 0xEF ? 2 : c >= 0xC2 ? 1 : -1;
            int ok = need > 0 && i + (size_t)need < n;
            for (int k = 1; ok && k <= need; k++)
                ok = ((unsigned char)s[i + (size_t)k] & 0xC0) == 0x80;
            if (ok) {
                fwrite(s + i, 1, (size_t)need + 1, stdout);
                i += (size_t)need;
            } else {
                printf("\\x%02X", c);
            }
        }
    }
}

/* All of stdin, for tokenize without --text. */
static int read_stdin(char **text, size_t *n) {
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - len, stdin);
        if (len < cap) break;
        char *grown = realloc(buf, cap * 2);
        if (!grown) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = grown;
        cap *= 2;
    }
    if (!buf || ferror(stdin)) {
        free(buf);
        fprintf(stderr, "cinfer: error: %s reading stdin\n", buf ? "read error" : "out of memory");
        return EXIT_ERROR;
    }
    *text = buf;
    *n = len;
    return 0;
}

static int tokenize_main(int argc, char **argv) {
    const char *model_dir = NULL, *text_arg = NULL;
    int ids_only = 0, add_special = 1;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--ids") == 0) {
            ids_only = 1;
        } else if (strcmp(argv[i], "--no-special") == 0) {
            add_special = 0;
        } else if (strcmp(argv[i], "--model") == 0 || strcmp(argv[i], "--text") == 0) {
            if (i + 1 >= argc) return usage_error("option '%s' needs a value", argv[i]);
            *(argv[i][2] == 'm' ? &model_dir : &text_arg) = argv[i + 1];
            i++;
        } else {
            return usage_error("unknown option '%s' for tokenize", argv[i]);
        }
    }
    if (!model_dir) return usage_error("%s", "--model DIR is required");
    cinfer_tokenizer *tok;
    if (cinfer_tokenizer_load(model_dir, &tok) != CINFER_OK) return fail();
    char *text = NULL;
    size_t n_text = 0;
    if (text_arg) {
        n_text = strlen(text_arg);
    } else {
        int bad = read_stdin(&text, &n_text);
        if (bad) {
            cinfer_tokenizer_free(tok);
            return bad;
        }
    }
    int32_t *ids = NULL;
    int n_ids = 0;
    int status = 0;
    if (cinfer_tokenize(tok, text_arg ? text_arg : text, n_text, add_special, &ids, &n_ids) !=
        CINFER_OK) {
        status = fail();
    } else if (ids_only) {
        for (int i = 0; i < n_ids; i++) printf("%s%d", i ? " " : "", ids[i]);
        printf("\n");
    } else {
        /* id, the text the token stands for (quoted, escaped), then its vocabulary string */
        for (int i = 0; i < n_ids && status == 0; i++) {
            char *bytes;
            size_t n_bytes;
            if (cinfer_tokenizer_token_bytes(tok, ids[i], &bytes, &n_bytes) != CINFER_OK) {
                status = fail();
                break;
            }
            const char *piece = cinfer_tokenizer_piece(tok, ids[i]);
            printf("%8d  \"", ids[i]);
            print_escaped(bytes, n_bytes);
            printf("\"  %s", cinfer_tokenizer_is_special(tok, ids[i]) ? "special " : "");
            print_escaped(piece, strlen(piece));
            printf("\n");
            free(bytes);
        }
    }
    free(ids);
    free(text);
    cinfer_tokenizer_free(tok);
    return status;
}
