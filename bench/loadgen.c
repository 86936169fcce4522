/*
 * loadgen: the client side of the benchmark.
 *
 * Single-threaded, epoll, non-blocking, no allocation on the hot path: it has to stay far below
 * one core while the proxy under test saturates its own. Every run is bounded in time (and an
 * alarm() backstop kills a run that somehow is not); it prints exactly one JSON object on stdout.
 *
 *   loadgen rate  --proxy HOST:PORT --target NAME:PORT [-c 50] [--duration 10] [--max-exchanges N]
 *       Closed loop: C workers each repeat connect, CONNECT, read 200, send 64 bytes, read the
 *       64-byte echo, close. Reports exchanges/s and latency percentiles.
 *   loadgen up|down --proxy ... --target ... [--tunnels T] [--bytes B] [--max-seconds S]
 *       Opens T tunnels, then moves B bytes in total (B/T each) to the origin's sink or from its
 *       source. The clock runs from "all tunnels open" to the last byte (or the last upload ack).
 *   loadgen idle --proxy ... --target ... [--tunnels N] [--open-concurrency K] [--hold S]
 *       Opens N tunnels (K handshakes in flight), holds them, then checks each with a 1-byte echo.
 *
 * --barrier: at the phase boundaries that bracket a measurement ("@ready"/"@done" around a bulk
 * transfer, "@start"/"@done" around a rate run, "@held" before the idle echo check) print the name
 * on stdout and wait for one line on stdin. The driver samples the proxy's CPU time and memory at
 * those points, so its figures cover exactly the measured interval.
 * --direct: connect to --proxy and skip the CONNECT (a no-proxy baseline of the harness itself).
 * --hello FILE: every tunnel starts with these bytes (a recorded TLS ClientHello for the target
 * name, at most 16 KiB), sent with the first bytes of the mode (the echo payload, the transfer
 * header, or right after the 200 for idle tunnels), as a TLS client sends its hello first. The
 * origin skips TLS handshake records before it reads its mode byte, so the figures measure the
 * same exchange plus the hello; a proxy with a TLS guard checks it on every tunnel.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 1024
#define HEAD_CAP 2048
/* Bytes per bulk send() or recv(MSG_TRUNC). With 256 KiB this process and the origin, which
 * share one CPU, were 82-93% busy in a one-tunnel transfer and bounded what a proxy could show
 * (connectproxy: down 2.0-2.2, up 2.5 GB/s; with 1 MiB 2.3-2.6 and 2.8-2.9 at the same proxy
 * CPU). */
#define IO_CHUNK (1 << 20)
#define MAX_SAMPLES 5000000
#define PAYLOAD_MAX 4096
#define HELLO_MAX 16384

/* ---------------------------------------------------------------- options */

enum mode { RATE, UP, DOWN, IDLE };

static struct {
    enum mode mode;
    struct sockaddr_in proxy;
    const char *target;
    int concurrency;
    double duration;
    long max_exchanges;
    int payload;
    int tunnels;
    uint64_t bytes;
    double max_seconds;
    int open_concurrency;
    double hold;
    double echo_timeout;
    double exchange_timeout;
    int barrier;
    int direct;
    const char *hello_file;
} opt = {
    .concurrency = 50,
    .duration = 10,
    .payload = 64,
    .tunnels = 1,
    .bytes = 1ull << 30,
    .max_seconds = 8,
    .open_concurrency = 200,
    .hold = 10,
    .echo_timeout = 15,
    .exchange_timeout = 10,
};

/* ---------------------------------------------------------------- errors */

enum err { E_CONNECT, E_ADDRNOTAVAIL, E_STATUS, E_EOF, E_RESET, E_TIMEOUT, E_MISMATCH, E_PROTO, E_N };
static const char *err_names[E_N] = {"connect",  "addrnotavail", "status",   "eof",
                                     "reset",    "timeout",      "mismatch", "protocol"};
static long errors[E_N];
static char first_error[256];

static void note_error(enum err kind, const char *fmt, ...) {
    errors[kind]++;
    if (first_error[0]) return;
    int n = snprintf(first_error, sizeof(first_error), "%s: ", err_names[kind]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(first_error + n, sizeof(first_error) - (size_t)n, fmt, ap);
    va_end(ap);
    for (char *p = first_error; *p; p++)  /* keep the JSON string trivially valid */
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = ' ';
}

static long total_errors(void) {
    long sum = 0;
    for (int i = 0; i < E_N; i++) sum += errors[i];
    return sum;
}

/* ---------------------------------------------------------------- time and samples */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct samples {
    double *v;
    size_t n, cap;
};

static void add_sample(struct samples *s, double seconds) {
    if (s->n == s->cap) {
        if (s->cap >= MAX_SAMPLES) return;  /* bounded: later samples are dropped */
        size_t cap = s->cap ? s->cap * 2 : 65536;
        double *v = realloc(s->v, cap * sizeof(double));
        if (v == NULL) return;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = seconds * 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted values. */
static double pct(const struct samples *s, double q) {
    if (s->n == 0) return 0;
    size_t rank = (size_t)ceil(q * (double)s->n);
    if (rank < 1) rank = 1;
    return s->v[rank - 1];
}

static void print_samples(const char *name, struct samples *s, int last) {
    qsort(s->v, s->n, sizeof(double), cmp_double);
    double sum = 0;
    for (size_t i = 0; i < s->n; i++) sum += s->v[i];
    printf("\"%s\":{\"n\":%zu,\"mean\":%.1f,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,"
           "\"p999\":%.1f,\"max\":%.1f}%s",
           name, s->n, s->n ? sum / (double)s->n : 0.0, pct(s, .50), pct(s, .90), pct(s, .99),
           pct(s, .999), s->n ? s->v[s->n - 1] : 0.0, last ? "" : ",");
}

/* ---------------------------------------------------------------- connections */

enum state {
    S_FREE,
    S_CONNECTING,
    S_REQUEST,   /* writing the CONNECT request */
    S_HEAD,      /* reading the proxy's response head */
    S_OPEN,      /* tunnel established: the mode decides what comes next */
    S_PAYLOAD,   /* rate: writing the payload */
    S_ECHO,      /* rate and idle: reading the echo */
    S_TRANSFER,  /* bulk transfer running */
    S_FINISHED,  /* bulk transfer complete; kept open until the driver has sampled */
};

struct conn {
    int fd;
    enum state state;
    double t_start, t_connected, t_request, t_head, t_done;
    char head[HEAD_CAP];
    size_t head_len;
    size_t out_off;        /* progress through the request, payload or upload header */
    size_t in_len;         /* echo bytes received */
    uint64_t sent;         /* upload payload bytes written */
    uint64_t got;          /* download bytes received, or the last upload ack */
    unsigned char ack[8];
    int ack_len;
};

static int epfd;
static struct conn *conns;
static int nconns;
static char request[512];
static size_t request_len;
static char payload[PAYLOAD_MAX];
/* The hello, then what the mode sends first: written in one go, so the proxy sees the hello and
 * the first application bytes as a client's first flight. */
static char hello[HELLO_MAX];
static size_t hello_len;
static char first[HELLO_MAX + PAYLOAD_MAX];
static size_t first_len;
static char bulk[IO_CHUNK];
static long active;

static void arm(struct conn *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0) {
        perror("epoll_ctl");
        exit(1);
    }
}

static void release(struct conn *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = S_FREE;
    active--;
}

static void fail(struct conn *c, enum err kind, const char *what) {
    note_error(kind, "%s", what);
    release(c);
}

/* Start a TCP connect; returns 0, or -1 after counting the failure. */
static int start_conn(struct conn *c) {
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->t_start = now();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        note_error(E_CONNECT, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    active++;
    if (connect(fd, (struct sockaddr *)&opt.proxy, sizeof(opt.proxy)) < 0 && errno != EINPROGRESS) {
        enum err kind = errno == EADDRNOTAVAIL ? E_ADDRNOTAVAIL : E_CONNECT;
        note_error(kind, "connect: %s", strerror(errno));
        release(c);
        return -1;
    }
    c->state = S_CONNECTING;
    arm(c, EPOLLOUT, EPOLL_CTL_ADD);
    return 0;
}

/* Write buf[c->out_off..len); 1 when all written, 0 when blocked, -1 on error (counted). */
static int write_some(struct conn *c, const char *buf, size_t len) {
    while (c->out_off < len) {
        ssize_t n = send(c->fd, buf + c->out_off, len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return 0;
            fail(c, errno == ECONNRESET || errno == EPIPE ? E_RESET : E_PROTO, strerror(errno));
            return -1;
        }
        c->out_off += (size_t)n;
    }
    return 1;
}

/* Classify a failed read: n == 0 is EOF; otherwise errno says why. */
static void read_failed(struct conn *c, ssize_t n, const char *where) {
    char what[96];
    if (n == 0) {
        snprintf(what, sizeof(what), "EOF while %s", where);
        fail(c, E_EOF, what);
    } else {
        snprintf(what, sizeof(what), "%s while %s", strerror(errno), where);
        fail(c, errno == ECONNRESET ? E_RESET : E_PROTO, what);
    }
}

/*
 * Drive connect -> CONNECT -> 200. Returns 1 once the tunnel is open (state S_OPEN), 0 while
 * waiting, -1 when the connection failed (already counted and released).
 */
static int advance_setup(struct conn *c, uint32_t events) {
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            note_error(err == EADDRNOTAVAIL ? E_ADDRNOTAVAIL : E_CONNECT, "connect: %s",
                       strerror(err));
            release(c);
            return -1;
        }
        if (!(events & EPOLLOUT)) return 0;
        c->t_connected = now();
        if (opt.direct) {
            c->t_request = c->t_head = c->t_connected;
            c->state = S_OPEN;
            return 1;
        }
        c->t_request = c->t_connected;
        c->state = S_REQUEST;
        c->out_off = 0;
    }
    if (c->state == S_REQUEST) {
        int rc = write_some(c, request, request_len);
        if (rc < 0) return -1;
        if (rc == 0) {
            arm(c, EPOLLOUT, EPOLL_CTL_MOD);
            return 0;
        }
        c->state = S_HEAD;
        arm(c, EPOLLIN, EPOLL_CTL_MOD);
        return 0;  /* the response cannot be here yet; wait for readability */
    }
    if (c->state == S_HEAD) {
        ssize_t n = recv(c->fd, c->head + c->head_len, HEAD_CAP - 1 - c->head_len, 0);
        if (n <= 0) {
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
            read_failed(c, n, "reading the response head");
            return -1;
        }
        c->head_len += (size_t)n;
        c->head[c->head_len] = 0;
        char *end = strstr(c->head, "\r\n\r\n");
        if (end == NULL) {
            if (c->head_len >= HEAD_CAP - 1) {
                fail(c, E_PROTO, "response head too long");
                return -1;
            }
            return 0;
        }
        if (end + 4 != c->head + c->head_len) {
            fail(c, E_PROTO, "bytes after the response head before the tunnel was used");
            return -1;
        }
        if (strncmp(c->head, "HTTP/1.", 7) != 0 || strncmp(c->head + 8, " 200", 4) != 0) {
            char *eol = strstr(c->head, "\r\n");
            if (eol) *eol = 0;
            note_error(E_STATUS, "%.120s", c->head);
            release(c);
            return -1;
        }
        c->t_head = now();
        c->state = S_OPEN;
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- barrier */

static void barrier(const char *name) {
    if (!opt.barrier) return;
    printf("@%s\n", name);
    fflush(stdout);
    struct pollfd p = {.fd = 0, .events = POLLIN};
    if (poll(&p, 1, 120000) <= 0) {
        fprintf(stderr, "loadgen: no reply from the driver at barrier %s\n", name);
        exit(3);
    }
    char ch;
    while (read(0, &ch, 1) == 1 && ch != '\n') {
    }
}

/* ---------------------------------------------------------------- rate */

static int run_rate(void) {
    struct samples connect_s = {0}, handshake_s = {0}, exchange_s = {0};
    long started = 0, completed = 0;
    nconns = opt.concurrency;
    conns = calloc((size_t)nconns, sizeof(*conns));
    for (int i = 0; i < nconns; i++) conns[i].fd = -1;

    barrier("start");
    double t0 = now(), deadline = t0 + opt.duration, t_last = t0;
    int stopping = 0;
    for (int i = 0; i < nconns; i++) {
        if (opt.max_exchanges && started >= opt.max_exchanges) break;
        started++;
        start_conn(&conns[i]);
    }
    struct epoll_event events[MAX_EVENTS];
    while (active > 0 || !stopping) {
        double t = now();
        if (t >= deadline) break;  /* in-flight exchanges are dropped, not counted */
        int wait_ms = (int)((deadline - t) * 1000) + 1;
        if (wait_ms > 100) wait_ms = 100;
        int n = epoll_wait(epfd, events, MAX_EVENTS, wait_ms);
        for (int i = 0; i < n; i++) {
            struct conn *c = &conns[events[i].data.u32];
            if (c->state == S_FREE) continue;
            if (c->state <= S_HEAD) {
                if (advance_setup(c, events[i].events) <= 0) continue;
                c->state = S_PAYLOAD;
                c->out_off = 0;
            }
            if (c->state == S_PAYLOAD) {
                int rc = write_some(c, first, first_len);
                if (rc < 0) continue;
                if (rc == 0) {
                    arm(c, EPOLLOUT, EPOLL_CTL_MOD);
                    continue;
                }
                c->state = S_ECHO;
                c->in_len = 0;
                arm(c, EPOLLIN, EPOLL_CTL_MOD);
                continue;
            }
            /* S_ECHO */
            char buf[PAYLOAD_MAX];
            ssize_t r = recv(c->fd, buf, (size_t)opt.payload - c->in_len, 0);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                read_failed(c, r, "reading the echo");
                continue;
            }
            if (memcmp(buf, payload + c->in_len, (size_t)r) != 0) {
                fail(c, E_MISMATCH, "echoed bytes differ from those sent");
                continue;
            }
            c->in_len += (size_t)r;
            if (c->in_len < (size_t)opt.payload) continue;
            double t_done = now();
            add_sample(&connect_s, c->t_connected - c->t_start);
            add_sample(&handshake_s, c->t_head - c->t_request);
            add_sample(&exchange_s, t_done - c->t_start);
            completed++;
            t_last = t_done;
            release(c);
        }
        /* Time out the stuck slots, and start a new exchange in every free one. */
        t = now();
        for (int i = 0; i < nconns; i++) {
            struct conn *c = &conns[i];
            if (c->state != S_FREE && t - c->t_start > opt.exchange_timeout)
                fail(c, E_TIMEOUT, "exchange took longer than the timeout");
            if (c->state != S_FREE || stopping || t >= deadline) continue;
            if (opt.max_exchanges && started >= opt.max_exchanges) {
                stopping = 1;
                continue;
            }
            started++;
            start_conn(c);
        }
    }
    double t_end = now();
    double elapsed = opt.max_exchanges ? t_last - t0 : (t_end < deadline ? t_end : deadline) - t0;
    /* Exchanges cut off by the deadline are not errors, but a long-stuck one is worth seeing. */
    int in_flight = 0;
    double oldest = 0;
    for (int i = 0; i < nconns; i++) {
        if (conns[i].state == S_FREE) continue;
        in_flight++;
        if (t_end - conns[i].t_start > oldest) oldest = t_end - conns[i].t_start;
    }
    barrier("done");
    for (int i = 0; i < nconns; i++)
        if (conns[i].state != S_FREE) release(&conns[i]);

    printf("{\"mode\":\"rate\",\"concurrency\":%d,\"elapsed_s\":%.6f,\"completed\":%ld,"
           "\"started\":%ld,\"rate\":%.2f,\"in_flight_at_end\":%d,\"oldest_in_flight_ms\":%.1f,",
           opt.concurrency, elapsed, completed, started,
           elapsed > 0 ? (double)completed / elapsed : 0.0, in_flight, oldest * 1e3);
    print_samples("connect_us", &connect_s, 0);
    print_samples("handshake_us", &handshake_s, 0);
    print_samples("exchange_us", &exchange_s, 0);
    return 0;
}

/* ---------------------------------------------------------------- bulk */

static int run_bulk(void) {
    nconns = opt.tunnels;
    conns = calloc((size_t)nconns, sizeof(*conns));
    uint64_t per = opt.bytes / (uint64_t)nconns;
    int failed = 0, opened = 0;
    for (int i = 0; i < nconns; i++)
        if (start_conn(&conns[i]) < 0) failed++;

    struct epoll_event events[MAX_EVENTS];
    double setup_deadline = now() + opt.exchange_timeout;
    while (opened + failed < nconns && now() < setup_deadline) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = &conns[events[i].data.u32];
            if (c->state == S_FREE || c->state >= S_OPEN) continue;
            int rc = advance_setup(c, events[i].events);
            if (rc < 0) failed++;
            if (rc > 0) {
                opened++;
                arm(c, 0, EPOLL_CTL_MOD);
            }
        }
    }
    for (int i = 0; i < nconns; i++) {
        if (conns[i].state != S_FREE && conns[i].state < S_OPEN) {
            fail(&conns[i], E_TIMEOUT, "tunnel setup took longer than the timeout");
            failed++;
        }
    }

    double t0 = 0, t_end = 0;
    int capped = 0, finished = 0;
    if (failed == 0) {
        barrier("ready");
        t0 = now();
        unsigned char header[HELLO_MAX + 9];
        memcpy(header, hello, hello_len);
        header[hello_len] = opt.mode == UP ? 'U' : 'D';
        for (int b = 0; b < 8; b++) header[hello_len + 1 + b] = (unsigned char)(per >> (56 - 8 * b));
        for (int i = 0; i < nconns; i++) {
            struct conn *c = &conns[i];
            c->out_off = 0;
            c->state = S_TRANSFER;
            int rc = write_some(c, (const char *)header, hello_len + 9);
            if (rc < 0) {
                failed++;
                continue;
            }
            if (rc == 0) {
                fail(c, E_PROTO, "could not write the transfer header at once");
                failed++;
                continue;
            }
            arm(c, opt.mode == UP ? EPOLLIN | EPOLLOUT : EPOLLIN, EPOLL_CTL_MOD);
        }
        double cap = t0 + opt.max_seconds;
        while (finished + failed < nconns) {
            double t = now();
            if (t >= cap) {
                capped = 1;
                break;
            }
            int wait_ms = (int)((cap - t) * 1000) + 1;
            int n = epoll_wait(epfd, events, MAX_EVENTS, wait_ms > 100 ? 100 : wait_ms);
            for (int i = 0; i < n; i++) {
                struct conn *c = &conns[events[i].data.u32];
                if (c->state != S_TRANSFER) continue;
                uint32_t ev = events[i].events;
                if (opt.mode == UP && (ev & EPOLLOUT) && c->sent < per) {
                    for (int k = 0; k < 16 && c->sent < per; k++) {
                        uint64_t left = per - c->sent;
                        size_t len = left < IO_CHUNK ? (size_t)left : IO_CHUNK;
                        ssize_t w = send(c->fd, bulk, len, MSG_NOSIGNAL);
                        if (w < 0) {
                            if (errno == EAGAIN || errno == EINTR) break;
                            fail(c, errno == EPIPE || errno == ECONNRESET ? E_RESET : E_PROTO,
                                 strerror(errno));
                            failed++;
                            break;
                        }
                        c->sent += (uint64_t)w;
                    }
                    if (c->state == S_FREE) continue;
                    if (c->sent == per) arm(c, EPOLLIN, EPOLL_CTL_MOD);
                }
                if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
                if (opt.mode == UP) {
                    unsigned char buf[512];
                    ssize_t r = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
                    if (r <= 0) {
                        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                        read_failed(c, r, "waiting for upload acks");
                        failed++;
                        continue;
                    }
                    for (ssize_t k = 0; k < r; k++) {
                        c->ack[c->ack_len++] = buf[k];
                        if (c->ack_len < 8) continue;
                        uint64_t v = 0;
                        for (int b = 0; b < 8; b++) v = (v << 8) | c->ack[b];
                        c->got = v;
                        c->ack_len = 0;
                    }
                    if (c->got == per) {
                        c->t_done = now();
                        c->state = S_FINISHED;
                        arm(c, 0, EPOLL_CTL_MOD);
                        finished++;
                    }
                } else {
                    ssize_t r = 0;
                    for (int k = 0; k < 16 && c->got < per; k++) {
                        r = recv(c->fd, bulk, IO_CHUNK, MSG_TRUNC | MSG_DONTWAIT);
                        if (r <= 0) break;
                        c->got += (uint64_t)r;
                    }
                    if (r < 0 && errno != EAGAIN && errno != EINTR) {
                        read_failed(c, r, "downloading");
                        failed++;
                        continue;
                    }
                    if (r == 0 && c->got < per) {
                        read_failed(c, r, "downloading");
                        failed++;
                        continue;
                    }
                    if (c->got >= per) {
                        c->t_done = now();
                        c->state = S_FINISHED;
                        arm(c, 0, EPOLL_CTL_MOD);
                        finished++;
                    }
                }
            }
        }
        t_end = capped ? now() : t0;
        for (int i = 0; i < nconns; i++)
            if (conns[i].state == S_FINISHED && conns[i].t_done > t_end) t_end = conns[i].t_done;
        barrier("done");
    }
    uint64_t moved = 0;
    for (int i = 0; i < nconns; i++) moved += conns[i].got;
    for (int i = 0; i < nconns; i++)
        if (conns[i].state != S_FREE) release(&conns[i]);
    double secs = t_end - t0;
    printf("{\"mode\":\"%s\",\"tunnels\":%d,\"bytes_requested\":%llu,\"bytes\":%llu,"
           "\"seconds\":%.6f,\"gbps\":%.4f,\"capped\":%d,\"failed_tunnels\":%d,",
           opt.mode == UP ? "up" : "down", nconns, (unsigned long long)(per * (uint64_t)nconns),
           (unsigned long long)moved, secs, secs > 0 ? (double)moved / secs / 1e9 : 0.0, capped,
           failed);
    return 0;
}

/* ---------------------------------------------------------------- idle */

static int run_idle(void) {
    nconns = opt.tunnels;
    conns = calloc((size_t)nconns, sizeof(*conns));
    for (int i = 0; i < nconns; i++) conns[i].fd = -1;
    int next = 0, held = 0, open_failures = 0, in_flight = 0, closed_while_held = 0;
    struct epoll_event events[MAX_EVENTS];
    double next_scan = 0;

    double t0 = now(), open_deadline = t0 + opt.exchange_timeout + nconns / 100.0;
    while ((next < nconns || in_flight > 0) && now() < open_deadline) {
        while (next < nconns && in_flight < opt.open_concurrency) {
            if (start_conn(&conns[next++]) < 0) open_failures++;
            else in_flight++;
        }
        int n = epoll_wait(epfd, events, MAX_EVENTS, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = &conns[events[i].data.u32];
            if (c->state == S_FREE) continue;
            if (c->state == S_OPEN) {
                fail(c, E_EOF, "a held tunnel was closed or sent unexpected bytes");
                closed_while_held++;
                continue;
            }
            int rc = advance_setup(c, events[i].events);
            if (rc == 0) continue;
            in_flight--;
            if (rc < 0) {
                open_failures++;
                continue;
            }
            if (hello_len) {
                c->out_off = 0;
                if (write_some(c, hello, hello_len) != 1) {
                    if (c->state != S_FREE) fail(c, E_PROTO, "could not write the hello at once");
                    open_failures++;
                    continue;
                }
            }
            held++;
            arm(c, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
        }
        double t = now();
        if (t < next_scan) continue;
        next_scan = t + 0.1;
        for (int i = 0; i < next; i++) {
            struct conn *c = &conns[i];
            if (c->state != S_FREE && c->state < S_OPEN && t - c->t_start > opt.exchange_timeout) {
                fail(c, E_TIMEOUT, "tunnel setup took longer than the timeout");
                in_flight--;
                open_failures++;
            }
        }
    }
    for (int i = 0; i < nconns; i++) {  /* whatever the open deadline cut short */
        struct conn *c = &conns[i];
        if (i >= next) open_failures++;
        else if (c->state != S_FREE && c->state < S_OPEN) {
            fail(c, E_TIMEOUT, "tunnel setup did not finish before the open deadline");
            open_failures++;
        }
    }
    double t_opened = now();

    /* Hold: any event on a held tunnel means the proxy closed it (or sent something). */
    double hold_end = t_opened + opt.hold;
    while (now() < hold_end) {
        int wait_ms = (int)((hold_end - now()) * 1000) + 1;
        int n = epoll_wait(epfd, events, MAX_EVENTS, wait_ms > 100 ? 100 : wait_ms);
        for (int i = 0; i < n; i++) {
            struct conn *c = &conns[events[i].data.u32];
            if (c->state != S_OPEN) continue;
            fail(c, E_EOF, "a held tunnel was closed or sent unexpected bytes");
            closed_while_held++;
        }
    }
    barrier("held");

    /* Check every tunnel still carries bytes both ways. */
    int echo_ok = 0, echo_failures = 0, waiting = 0;
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        if (c->state != S_OPEN) continue;
        c->out_off = 0;
        if (write_some(c, "E", 1) != 1) {
            if (c->state != S_FREE) fail(c, E_PROTO, "could not write the echo byte");
            echo_failures++;
            continue;
        }
        c->state = S_ECHO;
        arm(c, EPOLLIN, EPOLL_CTL_MOD);
        waiting++;
    }
    double echo_deadline = now() + opt.echo_timeout;
    while (waiting > 0 && now() < echo_deadline) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = &conns[events[i].data.u32];
            if (c->state != S_ECHO) continue;
            char ch;
            ssize_t r = recv(c->fd, &ch, 1, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            waiting--;
            if (r == 1 && ch == 'E') {
                echo_ok++;
                c->state = S_FINISHED;
                arm(c, 0, EPOLL_CTL_MOD);
            } else if (r == 1) {
                fail(c, E_MISMATCH, "the echo byte came back different");
                echo_failures++;
            } else {
                read_failed(c, r, "waiting for the idle echo");
                echo_failures++;
            }
        }
    }
    for (int i = 0; i < nconns; i++) {
        if (conns[i].state == S_ECHO) {
            fail(&conns[i], E_TIMEOUT, "no echo within the echo timeout");
            echo_failures++;
        }
    }
    for (int i = 0; i < nconns; i++)
        if (conns[i].state != S_FREE) release(&conns[i]);
    double open_secs = t_opened - t0;
    printf("{\"mode\":\"idle\",\"tunnels\":%d,\"opened\":%d,\"open_failures\":%d,"
           "\"closed_while_held\":%d,\"echo_ok\":%d,\"echo_failures\":%d,\"failed\":%d,"
           "\"open_seconds\":%.6f,\"opens_per_s\":%.1f,",
           nconns, held, open_failures, closed_while_held, echo_ok, echo_failures,
           nconns - echo_ok, open_secs, open_secs > 0 ? held / open_secs : 0.0);
    return 0;
}

/* ---------------------------------------------------------------- main */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen rate|up|down|idle --proxy HOST:PORT --target NAME:PORT [options]\n"
            "  -c/--concurrency N  --duration S  --max-exchanges N  --payload BYTES\n"
            "  --tunnels N  --bytes B  --max-seconds S  --open-concurrency K  --hold S\n"
            "  --echo-timeout S  --exchange-timeout S  --barrier  --direct  --hello FILE\n");
    exit(2);
}

static void parse_addr(const char *text) {
    char host[64];
    const char *colon = strrchr(text, ':');
    if (colon == NULL || (size_t)(colon - text) >= sizeof(host)) usage();
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = 0;
    opt.proxy.sin_family = AF_INET;
    opt.proxy.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &opt.proxy.sin_addr) != 1) usage();
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    if (!strcmp(argv[1], "rate")) opt.mode = RATE;
    else if (!strcmp(argv[1], "up")) opt.mode = UP;
    else if (!strcmp(argv[1], "down")) opt.mode = DOWN;
    else if (!strcmp(argv[1], "idle")) opt.mode = IDLE;
    else usage();
    int have_proxy = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--barrier")) opt.barrier = 1;
        else if (!strcmp(a, "--direct")) opt.direct = 1;
        else if (v == NULL) usage();
        else if (!strcmp(a, "--proxy")) parse_addr(v), have_proxy = 1, i++;
        else if (!strcmp(a, "--target")) opt.target = v, i++;
        else if (!strcmp(a, "-c") || !strcmp(a, "--concurrency")) opt.concurrency = atoi(v), i++;
        else if (!strcmp(a, "--duration")) opt.duration = atof(v), i++;
        else if (!strcmp(a, "--max-exchanges")) opt.max_exchanges = atol(v), i++;
        else if (!strcmp(a, "--payload")) opt.payload = atoi(v), i++;
        else if (!strcmp(a, "--tunnels")) opt.tunnels = atoi(v), i++;
        else if (!strcmp(a, "--bytes")) opt.bytes = strtoull(v, NULL, 10), i++;
        else if (!strcmp(a, "--max-seconds")) opt.max_seconds = atof(v), i++;
        else if (!strcmp(a, "--open-concurrency")) opt.open_concurrency = atoi(v), i++;
        else if (!strcmp(a, "--hold")) opt.hold = atof(v), i++;
        else if (!strcmp(a, "--echo-timeout")) opt.echo_timeout = atof(v), i++;
        else if (!strcmp(a, "--exchange-timeout")) opt.exchange_timeout = atof(v), i++;
        else if (!strcmp(a, "--hello")) opt.hello_file = v, i++;
        else usage();
    }
    if (!have_proxy || (opt.target == NULL && !opt.direct)) usage();
    if (opt.concurrency < 1 || opt.tunnels < 1 || opt.open_concurrency < 1 || opt.payload < 1 ||
        opt.payload > PAYLOAD_MAX || opt.bytes < (uint64_t)opt.tunnels)
        usage();

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    /* Backstop: every phase is bounded on its own; this catches a bug in that bounding. */
    alarm((unsigned)(opt.duration + opt.max_seconds + opt.hold + opt.echo_timeout +
                     2 * opt.exchange_timeout + opt.tunnels / 50 + 300));
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (!opt.direct)
        request_len = (size_t)snprintf(request, sizeof(request),
                                       "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", opt.target,
                                       opt.target);
    payload[0] = 'E';  /* the origin's echo mode */
    for (int i = 1; i < opt.payload; i++) payload[i] = (char)('a' + i % 26);
    if (opt.hello_file != NULL) {
        FILE *f = fopen(opt.hello_file, "rb");
        if (f == NULL) {
            perror(opt.hello_file);
            return 2;
        }
        hello_len = fread(hello, 1, sizeof(hello), f);
        int more = fgetc(f) != EOF;
        fclose(f);
        if (hello_len == 0 || more || hello[0] != 0x16) {
            fprintf(stderr, "loadgen: %s is not one TLS handshake flight of at most %d bytes\n",
                    opt.hello_file, HELLO_MAX);
            return 2;
        }
    }
    memcpy(first, hello, hello_len);
    memcpy(first + hello_len, payload, (size_t)opt.payload);
    first_len = hello_len + (size_t)opt.payload;
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        perror("epoll_create1");
        return 1;
    }

    if (opt.mode == RATE) run_rate();
    else if (opt.mode == IDLE) run_idle();
    else run_bulk();

    /* Common tail: the error counts and the client's own CPU time. */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
    printf("\"loadgen_cpu_s\":%.4f,\"errors\":{", cpu);
    for (int i = 0; i < E_N; i++) printf("\"%s\":%ld%s", err_names[i], errors[i], i + 1 < E_N ? "," : "");
    printf("},\"error_total\":%ld,\"first_error\":\"%s\"}\n", total_errors(), first_error);
    return 0;
}
