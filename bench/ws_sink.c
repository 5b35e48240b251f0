/* Websocket subscribers of bench/redis_nodes.py in C: the instrument of the fan-out measurement.
 *
 *     cc -O2 -Wall -Wextra -o ws_sink bench/ws_sink.c
 *     ./ws_sink PATH PORT:COUNT[:far] ...
 *
 * Why C: on the 2-core bench machine the subscribers share the cores with the nodes, so every
 * microsecond the instrument spends per delivery is taken from the nodes it measures. The Python
 * subscribers (bench/_redis_subs.py, uvloop) spend 10-13 us per delivery, as much as a node; this
 * epoll loop spends a few. No C websocket library is installed, and a subscriber that only counts
 * frames needs none: one fixed handshake, then unmasked server frames to count (and pings to answer).
 *
 * It speaks bench/_redis_subs.py's line protocol, so bench/redis_nodes.py's Clients drives either:
 * each PORT:COUNT opens COUNT subscribers of PATH on 127.0.0.1:PORT (the handshake of
 * bench/_load.py's Subscriber), ``far`` marks the nodes whose frames count for the cross-node
 * latency. Once every subscriber has its first frame (the snapshot) it prints ``ready``; then, one
 * command a line on stdin:
 *   reach N  prints ``reached <time>`` once the subscribers together have N frames each, <time> by
 *            CLOCK_MONOTONIC (Python's time.perf_counter() on Linux: the parent's clock);
 *   dump     prints {"far": [[arrival times of each far subscriber's frames]], "frames": all frames
 *            counted, "cpu": this process's CPU seconds} as one line, then exits.
 * A data frame (text or binary; a fragmented message counts once, as in Python) is counted, and
 * timed, when its last byte is read. Any error (refused upgrade, a connection closed, 120 s without
 * any event) is a message on stderr and exit status 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

enum { BATCH = 100, HEAD_MAX = 4096, IDLE_MS = 120000 };

typedef struct {           /* what each frame touches first, the handshake's buffer last */
    int fd;
    int upgraded;
    uint8_t hdr[14];       /* the frame header being read */
    size_t hdr_len;
    int in_payload;        /* the header is read, the payload is coming */
    uint64_t left;         /* payload bytes of the current frame still to come */
    int opcode;
    long frames;
    int64_t *times;        /* arrival times (ns), far subscribers only */
    size_t ntimes, cap;
    size_t ping_len;
    uint8_t ping[125];     /* a ping's payload, echoed in the pong */
    size_t head_len;       /* handshake response bytes so far (until upgraded) */
    char head[HEAD_MAX];
} Sub;

static Sub *subs;
static long nsubs, total, target = -1;
static int epfd;

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("ws_sink: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static int64_t now_ns(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* ``ns`` as seconds with 9 decimals: integer formatting, a fraction of printf's %f for the dump's
 * hundreds of thousands of times. */
static void print_seconds(int64_t ns) {
    printf("%lld.%09lld", (long long)(ns / 1000000000), (long long)(ns % 1000000000));
}

static void send_all(int fd, const void *data, size_t len) {
    const char *p = data;
    while (len > 0) {  /* handshakes and pongs are tiny: a blocking-ish retry loop is enough */
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            die("write: %s", strerror(errno));
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        }
    }
}

static void open_sub(Sub *s, int port, const char *path, int far) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->fd < 0 || connect(s->fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("connect to 127.0.0.1:%d: %s", port, strerror(errno));
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char key[25], request[1024];
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 21; i++)  /* 16 random-enough bytes, base64: the server only echoes a hash */
        key[i] = b64[rand() % 64];
    key[21] = "AQgw"[rand() % 4];  /* the last character holds 2 bits, the other 4 are zero */
    memcpy(key + 22, "==", 3);
    int len = snprintf(request, sizeof request,
                       "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                       path, port, key);
    send_all(s->fd, request, (size_t)len);
    if (far)
        s->times = malloc((s->cap = 256) * sizeof(int64_t));
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
}

static void frame_done(Sub *s, int64_t at) {
    if (s->opcode == 1 || s->opcode == 2) {
        s->frames++;
        total++;
        if (s->times != NULL) {
            if (s->ntimes == s->cap)
                s->times = realloc(s->times, (s->cap *= 2) * sizeof(int64_t));
            s->times[s->ntimes++] = at;
        }
    } else if (s->opcode == 9) {  /* pong: client frames are masked, a zero mask keeps the payload */
        uint8_t pong[6 + 125] = {0x8A, (uint8_t)(0x80 | s->ping_len)};
        memcpy(pong + 6, s->ping, s->ping_len);
        send_all(s->fd, pong, 6 + s->ping_len);
    } else if (s->opcode == 8) {
        die("subscriber %ld: the server closed the websocket", (long)(s - subs));
    }
}

/* Once the header's first 2 bytes are in they say how many more it has (2 or 8 length bytes); when
 * it is complete, start its payload and return 1. */
static int header_complete(Sub *s) {
    if (s->hdr_len < 2)
        return 0;
    uint8_t len7 = s->hdr[1] & 0x7F;
    size_t need = len7 == 126 ? 4 : len7 == 127 ? 10 : 2;
    if (s->hdr[1] & 0x80)
        die("a masked server frame");
    if (s->hdr_len < need)
        return 0;
    uint64_t len = len7;
    if (len7 >= 126) {
        len = 0;
        for (size_t i = 2; i < need; i++)
            len = len << 8 | s->hdr[i];
    }
    s->left = len;
    s->opcode = s->hdr[0] & 0x0F;  /* 0: a continuation, not counted (its message was, once) */
    s->ping_len = 0;
    s->hdr_len = 0;
    return 1;
}

/* Feed ``n`` bytes of the stream to the frame parser of ``s``. */
static void frames_in(Sub *s, const uint8_t *p, size_t n, int64_t at) {
    while (n > 0) {
        if (!s->in_payload) {
            s->hdr[s->hdr_len++] = *p++;
            n--;
            if (!header_complete(s))
                continue;
            if (s->left == 0) {
                frame_done(s, at);
                continue;
            }
            s->in_payload = 1;
        }
        size_t take = s->left < n ? (size_t)s->left : n;
        if (s->opcode == 9 && s->ping_len + take <= sizeof s->ping) {
            memcpy(s->ping + s->ping_len, p, take);
            s->ping_len += take;
        }
        p += take;
        n -= take;
        s->left -= take;
        if (s->left == 0) {
            s->in_payload = 0;
            frame_done(s, at);
        }
    }
}

static void handshake_in(Sub *s, const uint8_t *p, size_t n, int64_t at) {
    size_t room = HEAD_MAX - s->head_len;
    size_t take = n < room ? n : room;
    memcpy(s->head + s->head_len, p, take);
    s->head_len += take;
    char *end = memmem(s->head, s->head_len, "\r\n\r\n", 4);
    if (end == NULL) {
        if (s->head_len == HEAD_MAX)
            die("subscriber %ld: no end to the handshake response", (long)(s - subs));
        return;
    }
    if (strncmp(s->head, "HTTP/1.1 101", 12) != 0) {
        char *eol = memchr(s->head, '\r', s->head_len);
        die("upgrade refused: %.*s", (int)(eol - s->head), s->head);
    }
    s->upgraded = 1;
    size_t used = (size_t)(end + 4 - s->head) - (s->head_len - take);
    frames_in(s, p + used, n - used, at);
}

static void readable(Sub *s) {
    static uint8_t buf[1 << 16];
    ssize_t n = read(s->fd, buf, sizeof buf);
    if (n == 0)
        die("subscriber %ld: the server closed the connection", (long)(s - subs));
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        die("read: %s", strerror(errno));
    }
    int64_t at = now_ns(CLOCK_MONOTONIC);
    if (s->upgraded)
        frames_in(s, buf, (size_t)n, at);
    else
        handshake_in(s, buf, (size_t)n, at);
}

static void reached(void) {
    printf("reached ");
    print_seconds(now_ns(CLOCK_MONOTONIC));
    putchar('\n');
    fflush(stdout);
    target = -1;
}

static void dump(void) {
    printf("{\"far\":[");
    int first = 1;
    for (long i = 0; i < nsubs; i++) {
        if (subs[i].times == NULL)
            continue;
        printf(first ? "[" : ",[");
        first = 0;
        for (size_t j = 0; j < subs[i].ntimes; j++) {
            if (j)
                putchar(',');
            print_seconds(subs[i].times[j]);
        }
        putchar(']');
    }
    printf("],\"frames\":%ld,\"cpu\":", total);
    print_seconds(now_ns(CLOCK_PROCESS_CPUTIME_ID));
    printf("}\n");
    fflush(stdout);
    exit(0);
}

static void command(char *line) {
    long frames;
    if (sscanf(line, "reach %ld", &frames) == 1) {
        target = nsubs * frames;
        if (total >= target)
            reached();
    } else if (strncmp(line, "dump", 4) == 0) {
        dump();
    } else {
        die("unknown command: %s", line);
    }
}

static void stdin_in(void) {
    static char line[256];
    static size_t len;
    ssize_t n = read(0, line + len, sizeof line - 1 - len);
    if (n <= 0)
        die("stdin closed");
    len += (size_t)n;
    char *nl;
    while ((nl = memchr(line, '\n', len)) != NULL) {
        *nl = '\0';
        command(line);
        len -= (size_t)(nl + 1 - line);
        memmove(line, nl + 1, len);
    }
}

/* Run the loop until the subscribers together have ``frames_wanted`` frames (unless < 0) or the first
 * ``upgraded_wanted`` subscribers are upgraded (unless < 0); stdin is read once it is watched. */
static void loop_until(long frames_wanted, int upgraded_wanted) {
    struct epoll_event events[256];
    for (;;) {
        if (frames_wanted >= 0 && total >= frames_wanted)
            return;
        if (upgraded_wanted >= 0) {
            long up = 0;
            for (long i = 0; i < upgraded_wanted; i++)
                up += subs[i].upgraded;
            if (up == upgraded_wanted)
                return;
        }
        int n = epoll_wait(epfd, events, 256, IDLE_MS);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        if (n == 0)
            die("nothing happened for %d s (have %ld frames)", IDLE_MS / 1000, total);
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL)
                stdin_in();
            else
                readable(events[i].data.ptr);
        }
        if (target >= 0 && total >= target)
            reached();
    }
}

int main(int argc, char **argv) {
    if (argc < 3)
        die("usage: ws_sink PATH PORT:COUNT[:far] ...");
    srand((unsigned)getpid());
    for (int i = 2; i < argc; i++)
        nsubs += atol(strchr(argv[i], ':') ? strchr(argv[i], ':') + 1 : "0");
    subs = calloc((size_t)nsubs, sizeof(Sub));
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (subs == NULL || epfd < 0)
        die("out of memory or epoll");
    long opened = 0;
    for (int i = 2; i < argc; i++) {
        int port = atoi(argv[i]);
        char *count = strchr(argv[i], ':');
        if (port <= 0 || count == NULL)
            die("not PORT:COUNT[:far]: %s", argv[i]);
        long n = atol(count + 1);
        int far = strstr(count + 1, ":far") != NULL;
        for (long k = 0; k < n; k += BATCH) {  /* a listen backlog is finite: a batch at a time */
            long upto = k + BATCH < n ? k + BATCH : n;
            for (long j = k; j < upto; j++)
                open_sub(&subs[opened + j], port, argv[1], far);
            loop_until(-1, (int)(opened + upto));
        }
        opened += n;
    }
    loop_until(nsubs, -1);  /* every snapshot */
    printf("ready\n");
    fflush(stdout);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) < 0)
        die("epoll_ctl stdin: %s", strerror(errno));
    loop_until(-1, -1);  /* until dump exits */
    return 0;
}
