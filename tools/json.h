/*
 * json.h - a small streaming JSON writer for the command line's --json.
 * Commas and nesting are tracked; keys are plain ASCII identifiers.
 */
#ifndef HUGEVM_JSON_H
#define HUGEVM_JSON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct json {
    FILE *out;
    int depth;
    bool need_comma[32];
};

void json_init(struct json *j, FILE *out);
void json_obj_begin(struct json *j, const char *key); /* key NULL at top level / in arrays */
void json_obj_end(struct json *j);
void json_arr_begin(struct json *j, const char *key);
void json_arr_end(struct json *j);
void json_u64(struct json *j, const char *key, uint64_t v);
void json_i64(struct json *j, const char *key, int64_t v);
void json_dbl(struct json *j, const char *key, double v);
void json_str(struct json *j, const char *key, const char *v);
void json_bool(struct json *j, const char *key, bool v);
void json_null(struct json *j, const char *key);
/* Ends the document with a newline. */
void json_finish(struct json *j);

#endif
