//! fs-floor: the least work any copy of a tree of small files onto this filesystem must
//! do, as a floor for the small-file benchmark (tools/bench-remote.sh, tool "floor").
//!
//! Copies SRC to DST the way tpc-xfer's receiver lands files, minus everything else: no
//! network, no hashing, no protocol. Each file is read (from the page cache, in a warm
//! benchmark), written under a temporary name, given its mode and mtime through the fd,
//! and renamed into place; with SYNC=1, one syncfs makes it durable before the renames,
//! each directory is fsynced after them, and a last syncfs follows the directories' modes
//! and times, as a durable tpc-xfer push does. THREADS threads share the files.
//! Directories are made first, on one thread.
//!
//!   cc -O2 -pthread -o fs-floor tools/fs-floor.c
//!   fs-floor SRC DST THREADS SYNC [bare]   # prints the seconds it took
//!
//! `bare` leaves out what makes a copy a faithful one: each file is created under its
//! final name and written, with no temporary name, no rename, no mode or mtime (and
//! SYNC is ignored). No tool in the benchmark may copy that way; it shows how much of
//! the floor is the filesystem's cost of new files at all.
//!
//! Plain files and directories only (the benchmark's tree); anything else is an error.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// Files of the benchmark's tree are 8 KiB; anything up to this size is copied in one go.
#define FILE_BYTES_MAX (1 << 20)
#define THREADS_MAX 64

struct file {
    char *src, *dst, *tmp;
    struct stat st;
};

static const char *g_src, *g_dst;
static size_t g_src_len;
static struct file *g_files;
static size_t g_count, g_cap;
static char **g_dirs;
static size_t g_dir_count, g_dir_cap;
static int g_threads;
static int g_bare;

static void die(const char *what, const char *path) {
    fprintf(stderr, "fs-floor: %s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

static void *grow(void *p, size_t bytes) {
    p = realloc(p, bytes);
    if (!p) die("realloc", "");
    return p;
}

static char *join(const char *root, const char *rel) {
    size_t a = strlen(root), b = strlen(rel);
    char *p = grow(NULL, a + b + 1);
    memcpy(p, root, a);
    memcpy(p + a, rel, b + 1);
    return p;
}

static int visit(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    const char *rel = path + g_src_len;  // "" for the root, else "/a/b"
    if (ftw->level == 0 && type != FTW_D) {
        errno = ENOTDIR;
        die("copy a directory, not", path);
    }
    if (type == FTW_D) {
        if (g_dir_count == g_dir_cap) {
            g_dir_cap = g_dir_cap ? 2 * g_dir_cap : 256;
            g_dirs = grow(g_dirs, g_dir_cap * sizeof *g_dirs);
        }
        g_dirs[g_dir_count++] = join(g_dst, rel);
        if (mkdir(g_dirs[g_dir_count - 1], 0700) != 0 && errno != EEXIST)
            die("mkdir", g_dirs[g_dir_count - 1]);
        return 0;
    }
    if (type != FTW_F || !S_ISREG(st->st_mode) || st->st_size > FILE_BYTES_MAX) {
        errno = EINVAL;
        die("not a small regular file:", path);
    }
    if (g_count == g_cap) {
        g_cap = g_cap ? 2 * g_cap : 4096;
        g_files = grow(g_files, g_cap * sizeof *g_files);
    }
    struct file *f = &g_files[g_count++];
    f->src = strdup(path);
    f->dst = join(g_dst, rel);
    // The temporary name sits beside the final one, as tpc-xfer's does.
    char *slash = strrchr(f->dst, '/');
    if (asprintf(&f->tmp, "%.*s/.floor.%s.tmp", (int)(slash - f->dst), f->dst, slash + 1) < 0)
        die("asprintf", rel);
    f->st = *st;
    return 0;
}

// Thread `id` writes files id, id + THREADS, ...: created, written, finished.
static void *write_files(void *arg) {
    long id = (long)arg;
    char *buf = grow(NULL, FILE_BYTES_MAX);
    for (size_t i = (size_t)id; i < g_count; i += (size_t)g_threads) {
        struct file *f = &g_files[i];
        int in = open(f->src, O_RDONLY | O_CLOEXEC);
        if (in < 0) die("open", f->src);
        ssize_t n = read(in, buf, FILE_BYTES_MAX);
        if (n != f->st.st_size) {
            if (n >= 0) errno = EIO;  // short: the file changed under the benchmark
            die("read", f->src);
        }
        close(in);
        const char *to = g_bare ? f->dst : f->tmp;
        int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (out < 0) die("create", to);
        ssize_t w = write(out, buf, (size_t)n);
        if (w != n) {
            if (w >= 0) errno = ENOSPC;  // a short write: the usual cause, as tpc-xfer probes
            die("write", to);
        }
        if (g_bare) {
            close(out);
            continue;
        }
        struct timespec times[2] = {f->st.st_mtim, f->st.st_mtim};
        if (fchmod(out, f->st.st_mode & 01777) != 0 || futimens(out, times) != 0)
            die("set metadata of", f->tmp);
        close(out);
    }
    free(buf);
    return NULL;
}

static void *rename_files(void *arg) {
    long id = (long)arg;
    for (size_t i = (size_t)id; i < g_count; i += (size_t)g_threads)
        if (rename(g_files[i].tmp, g_files[i].dst) != 0) die("rename", g_files[i].tmp);
    return NULL;
}

static void run_threads(void *(*body)(void *)) {
    pthread_t t[THREADS_MAX];
    for (long i = 0; i < g_threads; i++) {
        int rc = pthread_create(&t[i], NULL, body, (void *)i);
        if (rc != 0) {
            errno = rc;
            die("pthread_create", "");
        }
    }
    for (int i = 0; i < g_threads; i++) pthread_join(t[i], NULL);
}

static void sync_filesystem(void) {
    int fd = open(g_dst, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || syncfs(fd) != 0) die("syncfs", g_dst);
    close(fd);
}

static int print_seconds_since(const struct timespec *t0) {
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.3f\n", (double)(t1.tv_sec - t0->tv_sec) + (t1.tv_nsec - t0->tv_nsec) / 1e9);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5 && !(argc == 6 && strcmp(argv[5], "bare") == 0)) {
        fprintf(stderr, "usage: fs-floor SRC DST THREADS SYNC [bare]\n");
        return 2;
    }
    g_bare = argc == 6;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    // Without trailing slashes, so that a relative path is the rest of a walked one.
    for (int a = 1; a <= 2; a++)
        for (size_t n = strlen(argv[a]); n > 1 && argv[a][n - 1] == '/'; n--) argv[a][n - 1] = 0;
    g_src = argv[1];
    g_dst = argv[2];
    g_threads = atoi(argv[3]);
    int sync = atoi(argv[4]);
    if (g_threads < 1 || g_threads > THREADS_MAX) {
        fprintf(stderr, "fs-floor: THREADS must be 1 to %d\n", THREADS_MAX);
        return 2;
    }
    g_src_len = strlen(g_src);
    if (nftw(g_src, visit, 64, FTW_PHYS) != 0) die("walk", g_src);
    run_threads(write_files);
    if (g_bare) return print_seconds_since(&t0);
    if (sync) {
        sync_filesystem();
    }
    run_threads(rename_files);
    // Directory modes and times last, as any copy sets them after filling them.
    for (size_t i = g_dir_count; i-- > 0;) {
        int fd = open(g_dirs[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) die("open", g_dirs[i]);
        if (sync && fsync(fd) != 0) die("fsync", g_dirs[i]);
        close(fd);
    }
    for (size_t i = g_dir_count; i-- > 0;) {
        struct stat st;
        char *src = join(g_src, g_dirs[i] + strlen(g_dst));
        if (stat(src, &st) != 0) die("stat", src);
        struct timespec times[2] = {st.st_mtim, st.st_mtim};
        if (chmod(g_dirs[i], st.st_mode & 01777) != 0 ||
            utimensat(AT_FDCWD, g_dirs[i], times, 0) != 0)
            die("set metadata of", g_dirs[i]);
        free(src);
    }
    if (sync) {
        // The directories' metadata too, as tpc-xfer's finish does.
        sync_filesystem();
    }
    return print_seconds_since(&t0);
}
