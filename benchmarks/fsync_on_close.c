/* An LD_PRELOAD library for benchmarks/ingest.py's second reference, "DCMTK storescp, durable":
 * DCMTK 3.6.7's storescp has no fsync option, so this makes every regular file that a process
 * closes after writing it durable first: fsync of the file, then of its directory. Those are two
 * of the three durability points tamsoat waits for before it answers (the third is its database
 * commit; storescp has no database).
 *
 * Built by the benchmark with the system's C compiler:
 *     cc -shared -fPIC -O2 -o fsync_on_close.so benchmarks/fsync_on_close.c -ldl
 * DCMTK writes its files through stdio (fopen, fwrite, fclose), so fclose is wrapped; close too.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

typedef int (*close_fn)(int);
typedef int (*fclose_fn)(FILE *);

static close_fn real_close(void) {
    static close_fn fn;
    if (!fn) fn = (close_fn)dlsym(RTLD_NEXT, "close");
    return fn;
}

static fclose_fn real_fclose(void) {
    static fclose_fn fn;
    if (!fn) fn = (fclose_fn)dlsym(RTLD_NEXT, "fclose");
    return fn;
}

/* fsync a regular file open for writing, then the directory that holds it. */
static void make_durable(int fd) {
    struct stat st;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || (flags & O_ACCMODE) == O_RDONLY) return;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
    fsync(fd);
    char link[32], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return;
    path[n] = '\0';
    int dir = open(dirname(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return;
    fsync(dir);
    real_close()(dir);
}

int close(int fd) {
    make_durable(fd);
    return real_close()(fd);
}

int fclose(FILE *stream) {
    int fd = fileno(stream);
    if (fd >= 0 && fflush(stream) == 0) make_durable(fd);
    return real_fclose()(stream);
}
