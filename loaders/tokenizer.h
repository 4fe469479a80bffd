/* Internal entry points of the tokenizer (loaders/tokenizer*.c) for the CLI, tests and fuzzers. */
#ifndef CINFER_TOKENIZER_H
#define CINFER_TOKENIZER_H

#include <stddef.h>

#include "../include/cinfer.h"

/* Parses the text of a tokenizer.json (name is the file name used in messages). No
 * tokenizer_config.json is read: bos/eos strings and the chat template stay NULL. */
cinfer_status tokenizer_parse(const char *name, const char *text, size_t length,
                              cinfer_tokenizer **out);

#endif
