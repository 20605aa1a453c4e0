#ifndef STRATA_CURL_H
#define STRATA_CURL_H

/* libcurl (easy handles) and libcrypto (SHA-256, HMAC-SHA256) behind plain types. curl.h and the
   OpenSSL headers are included only in strata_curl.c, so no Swift module ever sees them. One
   handle belongs to one thread at a time; it is reused across requests so connections stay
   alive. Only TierStore/Remote/CurlTransfer.swift calls these functions. */

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* How a transfer ended, as far as the transport is concerned (the HTTP status is separate). */
enum {
    STRATA_CURL_DONE = 0,        /* the exchange completed; look at the status */
    STRATA_CURL_ABORTED = 1,     /* the abort flag was raised */
    STRATA_CURL_TIMED_OUT = 2,   /* connect timeout, or the stall limit (slower than 1 byte/s) */
    STRATA_CURL_SINK_REFUSED = 3,/* the write callback returned less than it was given */
    STRATA_CURL_CONNECT = 4,     /* could not resolve or connect */
    STRATA_CURL_TRANSPORT = 5,   /* anything else: reset, truncated body, TLS, protocol */
    STRATA_CURL_SOURCE_FAILED = 6/* the upload read callback failed */
};

/* Receives response body bytes. Returns the number of bytes taken; anything else aborts the
   transfer with STRATA_CURL_SINK_REFUSED. `status` is the HTTP status of the answer the bytes
   belong to. */
typedef int64_t (*strata_curl_write_fn)(void *context, int status, const uint8_t *data, int64_t length);

/* Supplies upload bytes: returns how many were written to `buffer` (0 = end), or -1 to fail. */
typedef int64_t (*strata_curl_read_fn)(void *context, uint8_t *buffer, int64_t capacity);

/* A cancellation flag that another thread may raise while a transfer runs. */
void *strata_flag_new(void);
void strata_flag_raise(void *flag);
int strata_flag_is_raised(void *flag);
void strata_flag_free(void *flag);

void *strata_curl_new(void);
void strata_curl_free(void *handle);

/* Performs one request and blocks until it ends. `headers` are "Name: value" lines.
   `upload_length` < 0 means no request body; otherwise `read` supplies exactly that many bytes
   (PUT and POST). `follow_redirects` follows up to 5 redirects. `stall_seconds` aborts when fewer
   than 1 byte/s moved for that long. `abort_flag` (may be NULL) is polled from curl's progress
   callback. `ca_file` (may be NULL: the system's bundle) is a PEM file of the certificate
   authorities https servers are checked against. Returns one of the STRATA_CURL_* codes. */
int strata_curl_perform(void *handle, const char *method, const char *url,
                        const char *const *headers, int header_count,
                        int64_t upload_length, strata_curl_read_fn read, void *read_context,
                        strata_curl_write_fn write, void *write_context,
                        int64_t connect_timeout_ms, int64_t stall_seconds, int follow_redirects,
                        void *abort_flag, const char *ca_file);

/* Results of the last perform on this handle; strings stay valid until the next perform. */
int strata_curl_status(void *handle);
int64_t strata_curl_bytes_received(void *handle);
int64_t strata_curl_content_length(void *handle);  /* -1 when absent */
const char *strata_curl_etag(void *handle);        /* NULL when absent */
const char *strata_curl_content_range(void *handle);
const char *strata_curl_last_modified(void *handle);
const char *strata_curl_retry_after(void *handle);
const char *strata_curl_error_text(void *handle);  /* curl's words for a failed transfer */

/* SHA-256, streaming. */
void *strata_sha256_new(void);
void strata_sha256_update(void *context, const uint8_t *data, int64_t length);
void strata_sha256_final(void *context, uint8_t *digest32);  /* the context may not be updated after */
void strata_sha256_free(void *context);

/* HMAC-SHA256 in one call; writes 32 bytes. */
void strata_hmac_sha256(const uint8_t *key, int64_t key_length, const uint8_t *data, int64_t length,
                        uint8_t *digest32);

#ifdef __cplusplus
}
#endif
#endif
