/*
 * origin: the far end of every benchmark tunnel.
 *
 * One listening port on 127.0.0.1; single-threaded, epoll, non-blocking, so that it costs the
 * client CPU as little as possible and never becomes the thing being measured. The first byte a
 * client sends through its tunnel picks what the connection does:
 *
 *   'E'             echo: every byte received (the 'E' included) is written back.
 *   'U' + u64 N     upload sink: N bytes are read and thrown away with recv(MSG_TRUNC) (the kernel
 *                   discards them without a copy). Each time the running total crosses a multiple
 *                   of 1 MiB, and when it reaches N, the total is written back as a big-endian u64.
 *                   Proxies do not all forward a half-close, so this final count is how the client
 *                   learns that its upload really arrived, and the intermediate counts tell it how
 *                   much arrived when a transfer is cut short.
 *   'D' + u64 N     download source: N bytes are written from one static buffer, then a FIN.
 *
 * Before the mode byte, TLS handshake records (a first byte of 0x16, as a ClientHello starts)
 * are read and dropped whole: a client benchmarking a proxy with a TLS guard sends a real
 * ClientHello first (loadgen --hello), and the exchange after it is the usual one.
 *
 * Usage: origin [--port P] [--lifetime SECONDS]
 * Prints "port P\n" on stdout once listening (P is the kernel's choice when --port is 0).
 * It exits on SIGTERM, after --lifetime seconds, or when its parent dies.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 65536
#define MAX_EVENTS 512
#define OUT_CAP 65536           /* pending echo/ack bytes per connection */
#define IO_CHUNK (1 << 20)      /* one read or write of bulk data: see loadgen.c */
#define ACK_EVERY (1u << 20)

enum mode { MODE_NEW, MODE_RECORD, MODE_HEADER, MODE_ECHO, MODE_SINK, MODE_SOURCE, MODE_DRAIN };

struct conn {
    int in_use;
    enum mode mode;
    unsigned char header[9];  /* mode byte + u64 length while it is incomplete */
    int header_len;
    size_t record_left;       /* MODE_RECORD: bytes of the TLS record still to drop */
    uint64_t target;          /* N for sink and source */
    uint64_t done;            /* bytes sunk or sourced so far */
    uint64_t next_ack;        /* sink: the next 1 MiB boundary to report */
    unsigned char *out;       /* pending bytes for echo and acks */
    size_t out_len;
    int reading_paused;       /* echo stops reading while its output is backed up */
};

static struct conn *conns;
static int epfd;
static char bulk[IO_CHUNK];   /* contents are irrelevant: only the count matters */
static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void watch(int fd, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.fd = fd};
    if (epoll_ctl(epfd, op, fd, &ev) < 0 && op != EPOLL_CTL_DEL) die("epoll_ctl");
}

static void close_conn(int fd) {
    struct conn *c = &conns[fd];
    free(c->out);
    memset(c, 0, sizeof(*c));
    close(fd);  /* close() also removes the fd from the epoll set */
}

static uint32_t wanted_events(const struct conn *c) {
    uint32_t ev = 0;
    if (!c->reading_paused) ev |= EPOLLIN;
    if (c->out_len > 0 || (c->mode == MODE_SOURCE && c->done < c->target)) ev |= EPOLLOUT;
    return ev;
}

/* Write what is pending; returns -1 when the connection is broken. */
static int flush_out(int fd) {
    struct conn *c = &conns[fd];
    while (c->out_len > 0) {
        ssize_t n = send(fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return 0;
            return -1;
        }
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    return 0;
}

static int queue_out(int fd, const void *data, size_t len) {
    struct conn *c = &conns[fd];
    if (c->out == NULL) {
        c->out = malloc(OUT_CAP);
        if (c->out == NULL) return -1;
    }
    if (c->out_len + len > OUT_CAP) return -1;  /* the peer stopped reading: give up on it */
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return flush_out(fd);
}

static int send_ack(int fd, uint64_t count) {
    unsigned char be[8];
    for (int i = 0; i < 8; i++) be[i] = (unsigned char)(count >> (56 - 8 * i));
    return queue_out(fd, be, sizeof(be));
}

static uint64_t read_be64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

/* Source mode: write until N bytes are out or the socket is full. */
static int pump_source(int fd) {
    struct conn *c = &conns[fd];
    while (c->done < c->target) {
        uint64_t left = c->target - c->done;
        size_t len = left < IO_CHUNK ? (size_t)left : IO_CHUNK;
        ssize_t n = send(fd, bulk, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return 0;
            return -1;
        }
        c->done += (uint64_t)n;
    }
    /* All sent: FIN, then wait for the client's own close so no RST can cut the tail. */
    shutdown(fd, SHUT_WR);
    c->mode = MODE_DRAIN;
    return 0;
}

/* Sink mode: discard what has arrived and report progress. */
static int pump_sink(int fd) {
    struct conn *c = &conns[fd];
    for (int rounds = 0; rounds < 64; rounds++) {
        ssize_t n = recv(fd, bulk, IO_CHUNK, MSG_TRUNC | MSG_DONTWAIT);
        if (n == 0) return -1;
        if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
        c->done += (uint64_t)n;
        if (c->done > c->target) return -1;  /* more than announced: a protocol error */
        int crossed = 0;
        while (c->next_ack <= c->done && c->next_ack < c->target) {
            c->next_ack += ACK_EVERY;
            crossed = 1;
        }
        if (c->done == c->target) {
            if (send_ack(fd, c->done) < 0) return -1;
            c->mode = MODE_DRAIN;
            return 0;
        }
        if (crossed && send_ack(fd, c->done) < 0) return -1;
    }
    return 0;
}

static int on_readable(int fd) {
    struct conn *c = &conns[fd];
    if (c->mode == MODE_SINK) return pump_sink(fd);
    unsigned char buf[16384];
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n == 0) return -1;
    if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
    size_t used = 0;
    /* TLS handshake records before the mode byte: header (5 bytes), then its body, dropped. */
    while (used < (size_t)n && (c->mode == MODE_RECORD || (c->mode == MODE_NEW && buf[used] == 0x16))) {
        if (c->mode == MODE_NEW) {
            c->mode = MODE_RECORD;
            c->header_len = 0;
        }
        if (c->header_len < 5) {
            c->header[c->header_len++] = buf[used++];
            if (c->header_len == 5) c->record_left = (size_t)c->header[3] << 8 | c->header[4];
        } else {
            size_t take = (size_t)n - used < c->record_left ? (size_t)n - used : c->record_left;
            used += take;
            c->record_left -= take;
        }
        if (c->header_len == 5 && c->record_left == 0) {
            c->mode = MODE_NEW;
            c->header_len = 0;
        }
    }
    if (used == (size_t)n) return 0;
    if (c->mode == MODE_NEW) {
        c->mode = buf[used] == 'E' ? MODE_ECHO : MODE_HEADER;
        if (c->mode == MODE_HEADER && buf[used] != 'U' && buf[used] != 'D') return -1;
    }
    if (c->mode == MODE_HEADER) {
        while (used < (size_t)n && c->header_len < 9) c->header[c->header_len++] = buf[used++];
        if (c->header_len < 9) return 0;
        c->target = read_be64(c->header + 1);
        c->done = 0;
        if (c->header[0] == 'D') {
            if (used != (size_t)n) return -1;  /* nothing may follow a download request */
            c->mode = MODE_SOURCE;
            return pump_source(fd);
        }
        c->mode = MODE_SINK;
        c->next_ack = ACK_EVERY;
        c->done = (uint64_t)n - used;
        if (c->done > c->target) return -1;
        if (c->target == 0 || c->done == c->target) {
            c->mode = MODE_DRAIN;
            return send_ack(fd, c->done);
        }
        return pump_sink(fd);
    }
    if (c->mode == MODE_ECHO) {
        if (queue_out(fd, buf + used, (size_t)n - used) < 0) return -1;
        c->reading_paused = c->out_len > OUT_CAP / 2;
        return 0;
    }
    /* MODE_SOURCE or MODE_DRAIN: the client has nothing more to say; ignore stray bytes. */
    return 0;
}

static int on_writable(int fd) {
    struct conn *c = &conns[fd];
    if (flush_out(fd) < 0) return -1;
    if (c->mode == MODE_ECHO && c->out_len <= OUT_CAP / 2) c->reading_paused = 0;
    if (c->mode == MODE_SOURCE) return pump_source(fd);
    return 0;
}

static void accept_all(int lfd) {
    for (int i = 0; i < 256; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;  /* EAGAIN, or EMFILE: the next round tries again */
        if (fd >= MAX_FDS) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        memset(&conns[fd], 0, sizeof(conns[fd]));
        conns[fd].in_use = 1;
        watch(fd, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_ADD);
    }
}

int main(int argc, char **argv) {
    int port = 0;
    double lifetime = 3600;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--lifetime") && i + 1 < argc) lifetime = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: origin [--port P] [--lifetime SECONDS]\n");
            return 2;
        }
    }
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    conns = calloc(MAX_FDS, sizeof(*conns));
    if (conns == NULL) die("calloc");

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    socklen_t alen = sizeof(addr);
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf("port %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    watch(lfd, EPOLLIN, EPOLL_CTL_ADD);

    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct epoll_event events[MAX_EVENTS];
    while (!stop) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((double)(now.tv_sec - t0.tv_sec) > lifetime) break;
        int n = epoll_wait(epfd, events, MAX_EVENTS, 500);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                accept_all(lfd);
                continue;
            }
            struct conn *c = &conns[fd];
            if (!c->in_use) continue;
            uint32_t ev = events[i].events;
            int rc = 0;
            if (ev & EPOLLERR) rc = -1;
            if (rc == 0 && (ev & EPOLLOUT)) rc = on_writable(fd);
            if (rc == 0 && (ev & (EPOLLIN | EPOLLHUP | EPOLLRDHUP))) rc = on_readable(fd);
            if (rc < 0) {
                close_conn(fd);
                continue;
            }
            watch(fd, wanted_events(c) | EPOLLRDHUP, EPOLL_CTL_MOD);
        }
    }
    return 0;
}
