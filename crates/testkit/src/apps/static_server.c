/* An HTTP/1.1-over-TLS server linked statically against OpenSSL (podtap's test kit builds it
 * with `cc ... -Wl,-Bstatic -lssl -lcrypto`): the decrypted view must find SSL_read/SSL_write
 * in the executable itself, since no libssl.so is mapped.
 *
 * One process, one connection at a time, keep-alive. `GET /status/N` answers N; `/` and
 * `/api/...` answer 200; anything else 404. Request bodies (Content-Length) are read and
 * dropped. Usage: static_server PORT CERT KEY */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 16384

static const char *reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 404: return "Not Found";
    case 500: return "Internal Server Error";
    default: return "Status";
    }
}

static int status_of(const char *path) {
    if (strncmp(path, "/status/", 8) == 0) {
        int s = atoi(path + 8);
        return s >= 100 && s <= 599 ? s : 400;
    }
    if (strcmp(path, "/") == 0 || strncmp(path, "/api/", 5) == 0) return 200;
    return 404;
}

/* Serves one connection's requests until the peer closes. */
static void serve(SSL *ssl) {
    char buf[BUF + 1];
    size_t have = 0;
    for (;;) {
        char *end;
        buf[have] = 0;
        while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
            if (have == BUF) return;
            int n = SSL_read(ssl, buf + have, (int)(BUF - have));
            if (n <= 0) return;
            have += (size_t)n;
            buf[have] = 0;
        }
        size_t head = (size_t)(end - buf) + 4;
        char method[16], path[1024];
        if (sscanf(buf, "%15s %1023s", method, path) != 2) return;
        long body = 0;
        char *cl = strcasestr(buf, "\r\ncontent-length:");
        if (cl && cl < end) body = strtol(cl + 17, NULL, 10);
        if (body < 0) return;
        /* Drop the body: what is buffered, then what is still to come. */
        size_t rest = have - head;
        if ((size_t)body <= rest) {
            memmove(buf, buf + head + body, rest - (size_t)body);
            have = rest - (size_t)body;
        } else {
            size_t left = (size_t)body - rest;
            have = 0;
            while (left > 0) {
                int n = SSL_read(ssl, buf, (int)(left < BUF ? left : BUF));
                if (n <= 0) return;
                left -= (size_t)n;
            }
        }
        int status = status_of(path);
        char text[1200], reply[2048];
        int tlen = snprintf(text, sizeof text, "static openssl: %s %s\n", method, path);
        int rlen = snprintf(reply, sizeof reply,
                            "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
                            "Content-Length: %d\r\n\r\n%s",
                            status, reason(status), tlen, text);
        if (SSL_write(ssl, reply, rlen) != rlen) return;
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PORT CERT KEY\n", argv[0]);
        return 2;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, argv[2]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[3], SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 64) != 0) {
        perror("listen");
        return 1;
    }
    printf("static openssl server on port %s (%s)\n", argv[1], OpenSSL_version(OPENSSL_VERSION));
    fflush(stdout);
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0) continue;
        SSL *ssl = SSL_new(ctx);
        SSL_set_fd(ssl, c);
        if (SSL_accept(ssl) == 1) {
            serve(ssl);
            SSL_shutdown(ssl);
        }
        SSL_free(ssl);
        close(c);
    }
}
