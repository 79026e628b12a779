/*
 * proc.h - the tests' helpers for running the hugevm binary as another
 * process: spawn with its output in a log, wait with a deadline, look for a
 * JSON key's value in the log, a fresh pre-shared key, the port a receiver
 * wrote.
 */
#ifndef HUGEVM_TEST_PROC_H
#define HUGEVM_TEST_PROC_H

#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

static inline void proc_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* argv with stdout and stderr into log. */
static inline pid_t spawn(char *const argv[], const char *log)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* Exit status, or -1 after killing it at the deadline. */
static inline int wait_deadline(pid_t pid, int secs)
{
    for (int i = 0; i < secs * 20; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        proc_sleep_ms(50);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

/* Where the value after the first `key` in the log begins (past ':',
 * blanks and a quote), read into buf; NULL when the key is not there. */
static inline const char *file_after(const char *path, const char *key, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strstr(buf, key);
    if (!p)
        return NULL;
    p += strlen(key);
    while (*p == ':' || *p == ' ' || *p == '"')
        p++;
    return p;
}

/* True when the log holds `key` followed (after ':', blanks and a quote)
 * by val. */
static inline bool file_has(const char *path, const char *key, const char *val)
{
    char buf[65536];
    const char *p = file_after(path, key, buf, sizeof(buf));
    return p && strncmp(p, val, strlen(val)) == 0;
}

/* The number after the first `key` in the log (false: none). */
static inline bool file_u64(const char *path, const char *key, uint64_t *out)
{
    char buf[65536];
    const char *p = file_after(path, key, buf, sizeof(buf));
    char *end;
    if (!p)
        return false;
    *out = strtoull(p, &end, 10);
    return end != p;
}

/* A fresh 256-bit pre-shared key in dir/psk (mode 0600); false on error. */
static inline bool write_psk_file(const char *dir, char *path, size_t len)
{
    snprintf(path, len, "%s/psk", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return false;
    char line[80] = "test:";
    struct hv_rng r = {(uint64_t)hv_now_ns() | 1};
    for (int i = 0; i < 32; i++)
        snprintf(line + 5 + 2 * i, 3, "%02x", (unsigned)(hv_rng_next(&r) & 0xff));
    strcat(line, "\n");
    bool ok = write(fd, line, strlen(line)) == (ssize_t)strlen(line);
    close(fd);
    return ok;
}

/* The port a receiver wrote to path (--port-file), waiting up to secs; 0
 * when none came. */
static inline unsigned wait_port_file(const char *path, int secs)
{
    unsigned port = 0;
    for (int i = 0; i < secs * 20 && !port; i++) {
        FILE *f = fopen(path, "r");
        if (f) {
            if (fscanf(f, "%u", &port) != 1)
                port = 0;
            fclose(f);
        }
        if (!port)
            proc_sleep_ms(50);
    }
    return port;
}

#endif
