/* json.c - see json.h. */
#include "json.h"

#include <math.h>

void json_init(struct json *j, FILE *out)
{
    j->out = out;
    j->depth = 0;
    j->need_comma[0] = false;
}

static void put_str(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

static void prefix(struct json *j, const char *key)
{
    if (j->need_comma[j->depth])
        fputc(',', j->out);
    j->need_comma[j->depth] = true;
    if (key) {
        put_str(j->out, key);
        fputc(':', j->out);
    }
}

static void open(struct json *j, const char *key, char c)
{
    prefix(j, key);
    fputc(c, j->out);
    if (j->depth + 1 < (int)(sizeof(j->need_comma) / sizeof(j->need_comma[0])))
        j->depth++;
    j->need_comma[j->depth] = false;
}

static void close_(struct json *j, char c)
{
    fputc(c, j->out);
    if (j->depth > 0)
        j->depth--;
}

void json_obj_begin(struct json *j, const char *key) { open(j, key, '{'); }
void json_obj_end(struct json *j) { close_(j, '}'); }
void json_arr_begin(struct json *j, const char *key) { open(j, key, '['); }
void json_arr_end(struct json *j) { close_(j, ']'); }

void json_u64(struct json *j, const char *key, uint64_t v)
{
    prefix(j, key);
    fprintf(j->out, "%llu", (unsigned long long)v);
}

void json_i64(struct json *j, const char *key, int64_t v)
{
    prefix(j, key);
    fprintf(j->out, "%lld", (long long)v);
}

void json_dbl(struct json *j, const char *key, double v)
{
    prefix(j, key);
    if (isfinite(v))
        fprintf(j->out, "%.6g", v);
    else
        fputs("null", j->out);
}

void json_str(struct json *j, const char *key, const char *v)
{
    prefix(j, key);
    put_str(j->out, v ? v : "");
}

void json_bool(struct json *j, const char *key, bool v)
{
    prefix(j, key);
    fputs(v ? "true" : "false", j->out);
}

void json_null(struct json *j, const char *key)
{
    prefix(j, key);
    fputs("null", j->out);
}

void json_finish(struct json *j)
{
    fputc('\n', j->out);
    fflush(j->out);
}
