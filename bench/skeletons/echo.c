/* A ROUTER echo in C over libzmq: the floor of a front end that is not Python.
 *
 * Used by bench/bench_topology.py ("echo, compiled"), which compiles it against the libzmq that
 * pyzmq ships. Usage: echo ENDPOINT. Prints "ready" once bound. Returns every message as it came
 * (identity first). A message whose last frame is empty is a report request: no reply, one line
 * on stdout, "SERVED CPU_S", the messages echoed so far and the process's CPU time (all its
 * threads, ZeroMQ's I/O thread included), as the Python skeletons report theirs.
 */
#include <stdio.h>
#include <sys/resource.h>

#if defined(__has_include) && __has_include(<zmq.h>)
#include <zmq.h>
#else   /* the few declarations used, as zmq.h (libzmq 4.x) declares them */
typedef struct zmq_msg_t {
#if defined(_MSC_VER) && (defined(_M_X64) || defined(_M_ARM64))
    __declspec(align(8)) unsigned char _[64];
#elif defined(__GNUC__) || defined(__clang__)
    unsigned char _[64] __attribute__((aligned(sizeof(void *))));
#else
    unsigned char _[64];
#endif
} zmq_msg_t;
void *zmq_ctx_new(void);
void *zmq_socket(void *context, int type);
int zmq_bind(void *socket, const char *endpoint);
int zmq_msg_init(zmq_msg_t *msg);
int zmq_msg_recv(zmq_msg_t *msg, void *socket, int flags);
int zmq_msg_send(zmq_msg_t *msg, void *socket, int flags);
int zmq_msg_more(const zmq_msg_t *msg);
size_t zmq_msg_size(const zmq_msg_t *msg);
int zmq_msg_close(zmq_msg_t *msg);
#define ZMQ_ROUTER 6
#define ZMQ_SNDMORE 2
#endif

#define MAX_FRAMES 32

static double cpu_s(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s ENDPOINT\n", argv[0]);
        return 2;
    }
    void *sock = zmq_socket(zmq_ctx_new(), ZMQ_ROUTER);
    if (sock == NULL || zmq_bind(sock, argv[1]) != 0) {
        perror("zmq_bind");
        return 1;
    }
    puts("ready");
    fflush(stdout);
    zmq_msg_t frames[MAX_FRAMES];
    long served = 0;
    for (;;) {
        int n = 0, more = 1;
        while (more) {
            if (n == MAX_FRAMES) {
                fprintf(stderr, "a message of more than %d frames\n", MAX_FRAMES);
                return 1;
            }
            zmq_msg_init(&frames[n]);
            if (zmq_msg_recv(&frames[n], sock, 0) < 0) {
                perror("zmq_msg_recv");
                return 1;
            }
            more = zmq_msg_more(&frames[n++]);
        }
        if (zmq_msg_size(&frames[n - 1]) == 0) {   /* a report request */
            for (int i = 0; i < n; i++)
                zmq_msg_close(&frames[i]);
            printf("%ld %.6f\n", served, cpu_s());
            fflush(stdout);
            continue;
        }
        for (int i = 0; i < n; i++)   /* zmq_msg_send takes each frame over */
            zmq_msg_send(&frames[i], sock, i < n - 1 ? ZMQ_SNDMORE : 0);
        served++;
    }
}
