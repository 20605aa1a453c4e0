#include "strata_curl.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- abort flag ---------------------------------------------------------------------------- */

void *strata_flag_new(void) { return calloc(1, sizeof(int)); }
void strata_flag_raise(void *flag) { __atomic_store_n((int *)flag, 1, __ATOMIC_RELEASE); }
int strata_flag_is_raised(void *flag) { return flag ? __atomic_load_n((int *)flag, __ATOMIC_ACQUIRE) : 0; }
void strata_flag_free(void *flag) { free(flag); }

/* ---- easy handles -------------------------------------------------------------------------- */

typedef struct {
    CURL *curl;
    char error[CURL_ERROR_SIZE];
    int status;
    int64_t received;
    int64_t content_length;
    char etag[512], content_range[128], last_modified[128], retry_after[128];
    /* per-perform callbacks */
    strata_curl_write_fn write;
    void *write_context;
    strata_curl_read_fn read;
    void *read_context;
    void *abort_flag;
    int source_failed;
} strata_handle;

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static void global_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

void *strata_curl_new(void) {
    pthread_once(&global_once, global_init);
    strata_handle *h = calloc(1, sizeof(strata_handle));
    if (!h) return NULL;
    h->curl = curl_easy_init();
    if (!h->curl) { free(h); return NULL; }
    return h;
}

void strata_curl_free(void *handle) {
    strata_handle *h = handle;
    if (!h) return;
    curl_easy_cleanup(h->curl);
    free(h);
}

static void copy_value(char *dest, size_t capacity, const char *value, size_t length) {
    while (length > 0 && (value[0] == ' ' || value[0] == '\t')) { value++; length--; }
    while (length > 0 && (value[length - 1] == '\r' || value[length - 1] == '\n' ||
                          value[length - 1] == ' ' || value[length - 1] == '\t')) length--;
    if (length >= capacity) length = capacity - 1;
    memcpy(dest, value, length);
    dest[length] = 0;
}

static int header_is(const char *line, size_t length, const char *name, const char **value, size_t *value_length) {
    size_t n = strlen(name);
    if (length <= n || line[n] != ':' || strncasecmp(line, name, n) != 0) return 0;
    *value = line + n + 1;
    *value_length = length - n - 1;
    return 1;
}

static size_t on_header(char *buffer, size_t size, size_t count, void *context) {
    strata_handle *h = context;
    size_t length = size * count;
    const char *v;
    size_t vl;
    if (length >= 5 && strncmp(buffer, "HTTP/", 5) == 0) {
        /* A new answer (after a redirect or 100 Continue): forget the previous one's headers. */
        h->etag[0] = h->content_range[0] = h->last_modified[0] = h->retry_after[0] = 0;
        h->content_length = -1;
    } else if (header_is(buffer, length, "etag", &v, &vl)) {
        copy_value(h->etag, sizeof h->etag, v, vl);
    } else if (header_is(buffer, length, "content-range", &v, &vl)) {
        copy_value(h->content_range, sizeof h->content_range, v, vl);
    } else if (header_is(buffer, length, "last-modified", &v, &vl)) {
        copy_value(h->last_modified, sizeof h->last_modified, v, vl);
    } else if (header_is(buffer, length, "retry-after", &v, &vl)) {
        copy_value(h->retry_after, sizeof h->retry_after, v, vl);
    } else if (header_is(buffer, length, "content-length", &v, &vl)) {
        char text[32];
        copy_value(text, sizeof text, v, vl);
        char *end = NULL;
        long long parsed = strtoll(text, &end, 10);
        h->content_length = (end && end != text && *end == 0 && parsed >= 0) ? (int64_t)parsed : -1;
    }
    return length;
}

static size_t on_write(char *data, size_t size, size_t count, void *context) {
    strata_handle *h = context;
    size_t length = size * count;
    long status = 0;
    curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &status);
    if (!h->write) { h->received += (int64_t)length; return length; }
    int64_t taken = h->write(h->write_context, (int)status, (const uint8_t *)data, (int64_t)length);
    if (taken > 0) h->received += taken;
    return taken == (int64_t)length ? length : 0; /* 0 makes curl stop with CURLE_WRITE_ERROR */
}

static size_t on_read(char *buffer, size_t size, size_t count, void *context) {
    strata_handle *h = context;
    int64_t n = h->read ? h->read(h->read_context, (uint8_t *)buffer, (int64_t)(size * count)) : 0;
    if (n < 0) { h->source_failed = 1; return CURL_READFUNC_ABORT; }
    return (size_t)n;
}

static int on_progress(void *context, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    (void)dltotal; (void)dlnow; (void)ultotal; (void)ulnow;
    strata_handle *h = context;
    return strata_flag_is_raised(h->abort_flag) ? 1 : 0;
}

int strata_curl_perform(void *handle, const char *method, const char *url,
                        const char *const *headers, int header_count,
                        int64_t upload_length, strata_curl_read_fn read, void *read_context,
                        strata_curl_write_fn write, void *write_context,
                        int64_t connect_timeout_ms, int64_t stall_seconds, int follow_redirects,
                        void *abort_flag, const char *ca_file) {
    strata_handle *h = handle;
    CURL *c = h->curl;
    /* Reset options but keep the connection cache: the next request to the same host reuses it. */
    curl_easy_reset(c);
    h->error[0] = 0;
    h->status = 0;
    h->received = 0;
    h->content_length = -1;
    h->etag[0] = h->content_range[0] = h->last_modified[0] = h->retry_after[0] = 0;
    h->write = write; h->write_context = write_context;
    h->read = read; h->read_context = read_context;
    h->abort_flag = abort_flag;
    h->source_failed = 0;
    if (strata_flag_is_raised(abort_flag)) return STRATA_CURL_ABORTED;

    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L); /* threads: no SIGALRM for DNS timeouts */
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, h->error);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, h);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, h);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)connect_timeout_ms);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)(stall_seconds > 0 ? stall_seconds : 1));
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    /* Large reads: fewer recv calls and write callbacks per byte (curl's tool uses 100 KiB). */
    curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "strata/remote");
    if (ca_file) curl_easy_setopt(c, CURLOPT_CAINFO, ca_file);
    if (follow_redirects) {
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
    }

    struct curl_slist *list = NULL;
    for (int i = 0; i < header_count; i++) list = curl_slist_append(list, headers[i]);

    if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "PUT") == 0 && upload_length >= 0) {
        curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)upload_length);
    } else if (strcmp(method, "POST") == 0 && upload_length >= 0) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)upload_length);
    } else {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    }
    if (upload_length >= 0) {
        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(c, CURLOPT_READDATA, h);
        /* No "Expect: 100-continue": it costs a round trip (or a 1 s wait) per upload. */
        list = curl_slist_append(list, "Expect:");
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);

    CURLcode code = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    h->status = (int)status;
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(list);
    if (h->error[0] == 0 && code != CURLE_OK) {
        strncpy(h->error, curl_easy_strerror(code), sizeof h->error - 1);
    }

    switch (code) {
    case CURLE_OK: return STRATA_CURL_DONE;
    case CURLE_ABORTED_BY_CALLBACK: /* the progress callback, or the read callback giving up */
        if (strata_flag_is_raised(abort_flag)) return STRATA_CURL_ABORTED;
        return h->source_failed ? STRATA_CURL_SOURCE_FAILED : STRATA_CURL_TRANSPORT;
    case CURLE_OPERATION_TIMEDOUT: return STRATA_CURL_TIMED_OUT;
    case CURLE_WRITE_ERROR: return STRATA_CURL_SINK_REFUSED;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT: return STRATA_CURL_CONNECT;
    default:
        return h->source_failed ? STRATA_CURL_SOURCE_FAILED : STRATA_CURL_TRANSPORT;
    }
}

int strata_curl_status(void *handle) { return ((strata_handle *)handle)->status; }
int64_t strata_curl_bytes_received(void *handle) { return ((strata_handle *)handle)->received; }
int64_t strata_curl_content_length(void *handle) { return ((strata_handle *)handle)->content_length; }

static const char *or_null(const char *text) { return text[0] ? text : NULL; }
const char *strata_curl_etag(void *handle) { return or_null(((strata_handle *)handle)->etag); }
const char *strata_curl_content_range(void *handle) { return or_null(((strata_handle *)handle)->content_range); }
const char *strata_curl_last_modified(void *handle) { return or_null(((strata_handle *)handle)->last_modified); }
const char *strata_curl_retry_after(void *handle) { return or_null(((strata_handle *)handle)->retry_after); }
const char *strata_curl_error_text(void *handle) { return ((strata_handle *)handle)->error; }

/* ---- hashes -------------------------------------------------------------------------------- */

void *strata_sha256_new(void) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) { EVP_MD_CTX_free(ctx); return NULL; }
    return ctx;
}

void strata_sha256_update(void *context, const uint8_t *data, int64_t length) {
    if (length > 0) EVP_DigestUpdate((EVP_MD_CTX *)context, data, (size_t)length);
}

void strata_sha256_final(void *context, uint8_t *digest32) {
    unsigned int length = 32;
    EVP_DigestFinal_ex((EVP_MD_CTX *)context, digest32, &length);
}

void strata_sha256_free(void *context) { EVP_MD_CTX_free((EVP_MD_CTX *)context); }

void strata_hmac_sha256(const uint8_t *key, int64_t key_length, const uint8_t *data, int64_t length,
                        uint8_t *digest32) {
    unsigned int out = 32;
    static const uint8_t empty = 0;
    HMAC(EVP_sha256(), key, (int)key_length, data ? data : &empty, (size_t)length, digest32, &out);
}
