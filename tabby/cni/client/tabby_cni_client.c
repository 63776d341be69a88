/* tabby-cni / tabby-ipam as the runtime execs them: a small client of the node agent.
 *
 * A Python plugin pays ~25 ms of interpreter start-up and imports on every exec, and eight
 * at once queue on the CPU. This client forwards its invocation (plugin name, the CNI_* and
 * TABBY_* environment, stdin) to the CNI server of the node agent running in the same
 * network namespace (an abstract unix socket, so each namespace reaches its own agent) and
 * prints the answer with the exit code it was given. When no agent listens, it execs the
 * Python plugin installed beside it (<this executable>.py) with the same stdin, so the
 * plugin works before the agent starts and without one.
 *
 * An abstract socket has no permissions: any user of the namespace could bind the name
 * first. So the client talks only to a server running as root (or as itself), checked with
 * SO_PEERCRED, and otherwise runs the Python plugin itself.
 *
 * Wire format (tabby/cni/server.py is the other end): "TBC1", then three frames of a
 * 4-byte big-endian length and bytes: plugin name, environment ("K=V\0" entries), stdin.
 * The answer: 4-byte exit code, 4-byte length, stdout bytes.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <libgen.h>
#include <signal.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define SOCKET_NAME "tabby-cni"
#define ANSWER_TIMEOUT_S 300 /* a wedged agent: "try again" rather than a hang */
#define TABBY_MAX_BYTES (16u << 20)

extern char **environ;

struct buf {
    char *data;
    size_t len, cap;
};

static void die_json(int code, const char *msg) {
    printf("{\n  \"cniVersion\": \"1.0.0\",\n  \"code\": %d,\n  \"msg\": \"%s\"\n}\n", code, msg);
    fflush(stdout);
    exit(1);
}

static void put(struct buf *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            die_json(999, "tabby-cni client: out of memory");
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void frame(struct buf *b, const void *p, size_t n) {
    uint32_t be = htonl((uint32_t)n);
    put(b, &be, 4);
    put(b, p, n);
}

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *p, size_t n) {
    char *c = p;
    while (n) {
        ssize_t r = read(fd, c, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

/* No agent: run the Python plugin with our stdin (already read, so put it back on fd 0). */
static void fallback(char **argv, const struct buf *in, const char *self) {
    char path[PATH_MAX + 4];
    snprintf(path, sizeof path, "%s.py", self);
    int fd = memfd_create("tabby-cni-stdin", MFD_CLOEXEC);
    if (fd < 0 || write_all(fd, in->data ? in->data : "", in->len) < 0 ||
        lseek(fd, 0, SEEK_SET) < 0 || dup2(fd, 0) < 0)
        die_json(5, "tabby-cni client: cannot hand stdin to the plugin");
    argv[0] = path;
    execv(path, argv);
    die_json(999, "tabby-cni client: no agent listening and the Python plugin cannot run");
}

/* The server must be root or this user: anyone can bind an abstract name. */
static int trusted_peer(int s) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return 0;
    return cred.uid == 0 || cred.uid == geteuid();
}

int main(int argc, char **argv) {
    /* A server that closes early must give "try again", not a silent death by SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        die_json(999, "tabby-cni client: cannot find its own path");
    self[n] = 0;
    /* Replaced while running (an upgrade): the kernel appends " (deleted)". */
    const char *deleted = " (deleted)";
    size_t dl = strlen(deleted);
    if ((size_t)n > dl && !strcmp(self + n - dl, deleted))
        self[n - dl] = 0;
    /* The plugin asked for is the name the runtime ran (tabby-ipam may be a link to the
     * same file), unless that is not one of ours (an exec through /proc/self/fd/N). */
    char arg0[PATH_MAX], exe[PATH_MAX];
    snprintf(arg0, sizeof arg0, "%s", argc > 0 && argv[0] ? argv[0] : self);
    snprintf(exe, sizeof exe, "%s", self);
    const char *name = basename(arg0);
    if (strcmp(name, "tabby-cni") && strcmp(name, "tabby-ipam"))
        name = basename(exe);

    struct buf in = {0};
    char chunk[65536];
    const char *command = getenv("CNI_COMMAND");
    int skip_stdin = command && !strcmp(command, "VERSION") && isatty(0);
    for (; !skip_stdin;) {
        ssize_t r = read(0, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die_json(5, "stdin: cannot read the network configuration");
        if (r == 0)
            break;
        put(&in, chunk, (size_t)r);
        if (in.len > TABBY_MAX_BYTES)
            die_json(5, "stdin: network configuration larger than 16 MiB");
    }

    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path + 1, SOCKET_NAME, sizeof SOCKET_NAME - 1);
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + sizeof SOCKET_NAME - 1);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, alen) < 0 || !trusted_peer(s)) {
        if (s >= 0)
            close(s);
        fallback(argv, &in, self);
    }
    struct timeval tv = {.tv_sec = ANSWER_TIMEOUT_S};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    struct buf env = {0};
    for (char **e = environ; *e; e++)
        if (!strncmp(*e, "CNI_", 4) || !strncmp(*e, "TABBY_", 6))
            put(&env, *e, strlen(*e) + 1);
    struct buf req = {0};
    put(&req, "TBC1", 4);
    frame(&req, name, strlen(name));
    frame(&req, env.data ? env.data : "", env.len);
    frame(&req, in.data ? in.data : "", in.len);
    if (write_all(s, req.data, req.len) < 0)
        die_json(11, "tabby-cni client: the node agent closed the connection; try again");
    shutdown(s, SHUT_WR);

    uint32_t head[2];
    if (read_all(s, head, sizeof head) < 0)
        die_json(11, "tabby-cni client: the node agent closed the connection before answering; try again");
    uint32_t code = ntohl(head[0]), len = ntohl(head[1]);
    if (len > TABBY_MAX_BYTES)
        die_json(999, "tabby-cni client: answer too large");
    char *out = malloc(len ? len : 1);
    if (!out || read_all(s, out, len) < 0)
        die_json(11, "tabby-cni client: the answer was cut short; try again");
    if (write_all(1, out, len) < 0)
        return 1;
    return (int)code;
}
