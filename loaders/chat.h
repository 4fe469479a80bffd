/* Chat formatting: turning a conversation into the prompt text a chat checkpoint was tuned on.
 *
 * Checkpoints publish the format as a Jinja template (tokenizer_config.json's chat_template).
 * cinfer does not run Jinja: it recognizes the template families Llama-family checkpoints use by
 * their markers and formats them in C, exactly as transformers renders them (tests/test_chat.cpp
 * checks every family against transformers' renderer). A template of any other family is refused
 * with a message that says so, rather than formatted by a guess. */
#ifndef CINFER_CHAT_H
#define CINFER_CHAT_H

#include "../include/cinfer.h"

/* The family a template belongs to ("llama3", "llama2", "mistral", "chatml", "zephyr"), or NULL
 * when cinfer does not recognize it. */
const char *ci_chat_family(const char *chat_template);

/* Formats messages with chat_template; bos_token and eos_token are the tokenizer's strings (NULL
 * where it has none). *text is malloc'd. Fails with CINFER_ERR_UNSUPPORTED for a template of an
 * unknown family and CINFER_ERR_ARGUMENT where the template itself would raise (roles that do
 * not alternate, a role the format has no place for). */
cinfer_status ci_chat_render(const char *chat_template, const char *bos_token,
                             const char *eos_token, const cinfer_chat_message *messages,
                             int n_messages, int add_generation_prompt, char **text);

#endif
