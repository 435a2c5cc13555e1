/* The passes over a serialized ExportLogsServiceRequest that every request needs, in C.
 *
 * Per record, Python's share of the work has to stay below a microsecond for the processor to cost
 * little more than a bytes relay; reading each record's fields in Python costs several. So:
 *
 * - index() walks request -> ResourceLogs -> ScopeLogs -> LogRecord -> KeyValue and reports, per
 *   record, only what the pipeline decides on: where it lies, its trace id, whether a downgrade
 *   rule could apply (severity), and its attributes whose key is one the classifier reads. On the
 *   way it checks every byte as upb's decoder would (the intake's check of every body, in the
 *   same pass): a request upb would refuse gets what is wrong with it instead of an index.
 * - assemble() writes the request to forward: each record with bytes appended (its enrichment;
 *   protobuf merges a repeated field's later entries into the same message), replaced, or left
 *   out, and every enclosing length prefix recomputed.
 * - record_text() reads what a rule needs of a candidate record whose body is one string.
 * - may_match() looks for the downgrade rules' needles in the bytes of the records they could match.
 * - resolve() gives each record its own verdict or its trace's, from the trace memory's table
 *   (TraceTable, in _trace_table.c: built into this module).
 * - The user agents index() reports are looked up and classified by UserAgentCache (_user_agents.c,
 *   built into this module), reading them where they lie in the request.
 *
 * assemble() sees only requests index() found valid, so a malformed buffer there is a bug: it
 * raises ValueError rather than guessing. Anything protobuf
 * would merge in a way the walk does not model (a KeyValue whose key or value occurs twice, a
 * known field with an unexpected wire type) makes the record "odd": the caller decides it from
 * the decoded record instead. Field numbers are those of opentelemetry/proto (logs.proto,
 * common.proto, logs_service.proto).
 */
#define _GNU_SOURCE /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "_trace_table.h"
#include "_user_agents.h"

#define MAX_KEYS 250          /* key ids fit in one byte (the user-agent cache key's prefix) */
#define MASKED_KEYS 64        /* the first keys are found through bit masks, the rest one by one */
#define MAX_HITS 32           /* more evidence attributes than this in one record: decided decoded */
#define MAX_GROUP_DEPTH 100   /* as deep as the check lets groups nest (MAX_DEPTH) */

enum kind { KIND_EVIDENCE = 0, KIND_PATH = 1, KIND_USER_AGENT = 2, KIND_ODD = 3 };

typedef struct {
    uint32_t number;
    int wire_type;
    Py_ssize_t tag_at;        /* where the field's tag starts */
    Py_ssize_t start, end;    /* length-delimited: the content; otherwise empty at the value's end */
    uint64_t value;           /* varint fields */
} field_t;

static int read_varint(const uint8_t *buf, Py_ssize_t *at, Py_ssize_t stop, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && *at < stop; shift += 7) {
        uint8_t b = buf[(*at)++];
        v |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            *out = v;
            return 1;
        }
    }
    return 0;
}


/* Unknown fields may be groups (upb keeps them): skip to the matching end tag. Inside a group upb
 * takes any field number, 0 included. */
static int skip_group(const uint8_t *buf, Py_ssize_t *at, Py_ssize_t stop, uint32_t number, int depth)
{
    if (depth > MAX_GROUP_DEPTH)
        return 0;
    while (*at < stop) {
        uint64_t tag, value;
        if (!read_varint(buf, at, stop, &tag))
            return 0;
        switch (tag & 7) {
        case 0:
            if (!read_varint(buf, at, stop, &value))
                return 0;
            break;
        case 1:
        case 5: {
            Py_ssize_t size = (tag & 7) == 1 ? 8 : 4;
            if (stop - *at < size)
                return 0;
            *at += size;
            break;
        }
        case 2:
            if (!read_varint(buf, at, stop, &value) || value > (uint64_t)(stop - *at))
                return 0;
            *at += (Py_ssize_t)value;
            break;
        case 3:
            if (!skip_group(buf, at, stop, (uint32_t)(tag >> 3), depth + 1))
                return 0;
            break;
        case 4:
            return (tag >> 3) == number;
        default:
            return 0;
        }
    }
    return 0;
}

/* Reads the field at *at; returns 0 if the bytes are not a well-formed field. */
static inline int next_field(const uint8_t *buf, Py_ssize_t *at, Py_ssize_t stop, field_t *f)
{
    uint64_t tag, length;
    f->tag_at = *at;
    if (*at < stop && buf[*at] < 0x80 && buf[*at] >= 0x08) { /* the usual one-byte tag */
        tag = buf[(*at)++];
        if ((tag & 7) == 2 && *at < stop && buf[*at] < 0x80) { /* and a length below 128 */
            length = buf[(*at)++];
            if (length > (uint64_t)(stop - *at))
                return 0;
            f->number = (uint32_t)(tag >> 3);
            f->wire_type = 2;
            f->value = 0;
            f->start = *at;
            *at += (Py_ssize_t)length;
            f->end = *at;
            return 1;
        }
    } else if (!read_varint(buf, at, stop, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1FFFFFFF) {
        return 0;
    }
    f->number = (uint32_t)(tag >> 3);
    f->wire_type = (int)(tag & 7);
    f->value = 0;
    switch (f->wire_type) {
    case 0:
        if (!read_varint(buf, at, stop, &f->value))
            return 0;
        break;
    case 1:
        if (stop - *at < 8)
            return 0;
        *at += 8;
        break;
    case 5:
        if (stop - *at < 4)
            return 0;
        *at += 4;
        break;
    case 2:
        if (!read_varint(buf, at, stop, &length) || length > (uint64_t)(stop - *at))
            return 0;
        f->start = *at;
        *at += (Py_ssize_t)length;
        f->end = *at;
        return 1;
    case 3:
        if (!skip_group(buf, at, stop, f->number, 0))
            return 0;
        break;
    default:
        return 0;
    }
    f->start = f->end = *at;
    return 1;
}

static int malformed(void)
{
    PyErr_SetString(PyExc_ValueError, "malformed ExportLogsServiceRequest (it should have been validated)");
    return 0;
}

/* --- validate --------------------------------------------------------------------------------------- */
/* What upb's decoder refuses, checked without building messages: index() checks the messages it
 * walks field by field (next_checked) and the others (resources, bodies, values) whole
 * (validate_fields). The schema comes from the protobuf descriptors
 * (wire.py): per message type, per field number below SCHEMA_FIELDS, what the field is. As in upb:
 * a known field with another wire type is an unknown field; unknown fields are skipped (groups
 * too, nesting checked); strings of proto3 messages must be valid UTF-8; submessages and groups
 * nest at most MAX_DEPTH deep; a varint has at most 10 bytes, a tag or a length at most 5. */

#define SCHEMA_FIELDS 32
#define MAX_DEPTH 100
enum schema_kind { FIELD_OTHER = 0, FIELD_STRING = 1, FIELD_MESSAGE = 2 };

typedef struct {
    const uint8_t *schema;    /* per type: SCHEMA_FIELDS pairs (kind, message type) */
    const char *problem;
} validation_t;

/* Not ASCII-only: the full check, code point by code point. */
static int utf8_valid_slow(const uint8_t *p, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        if (i + 8 <= n) { /* ASCII runs 8 bytes at a time */
            uint64_t chunk;
            memcpy(&chunk, p + i, 8);
            if ((chunk & 0x8080808080808080ULL) == 0) {
                i += 8;
                continue;
            }
        }
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int extra;
        uint32_t min;
        if (c >= 0xC2 && c <= 0xDF) {
            extra = 1;
            min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            extra = 2;
            min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            extra = 3;
            min = 0x10000;
        } else {
            return 0;
        }
        if (n - i <= extra)
            return 0;
        uint32_t cp = c & (0x3F >> extra);
        for (int k = 1; k <= extra; k++) {
            uint8_t cc = p[i + k];
            if ((cc & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (cc & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += extra + 1;
    }
    return 1;
}

/* Almost every string is ASCII: every byte's high bit ORed together first, words at a time (the
 * last word overlapping the one before), and the full check only if one is set. */
static inline int utf8_valid(const uint8_t *p, Py_ssize_t n)
{
    uint64_t high = 0, word;
    if (n >= 8) {
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            memcpy(&word, p + i, 8);
            high |= word;
        }
        memcpy(&word, p + n - 8, 8);
        high |= word;
    } else {
        for (Py_ssize_t i = 0; i < n; i++)
            high |= p[i];
    }
    return (high & 0x8080808080808080ULL) == 0 || utf8_valid_slow(p, n);
}

static int read_limited(const uint8_t *buf, Py_ssize_t *at, Py_ssize_t stop, int max_bytes, uint64_t *out)
{
    Py_ssize_t start = *at;
    if (!read_varint(buf, at, stop, out))
        return 0;
    return *at - start <= max_bytes;
}

static int validate_fields(validation_t *v, const uint8_t *buf, Py_ssize_t *at, Py_ssize_t stop, Py_ssize_t type, int depth, uint32_t group);

/* 64 bytes per message type, the first the request's; every message field names a type. */
static int schema_valid(PyObject *schema)
{
    const uint8_t *table = (const uint8_t *)PyBytes_AS_STRING(schema);
    Py_ssize_t types = PyBytes_GET_SIZE(schema) / (SCHEMA_FIELDS * 2);
    if (types < 1 || PyBytes_GET_SIZE(schema) % (SCHEMA_FIELDS * 2) != 0)
        return 0;
    for (Py_ssize_t i = 0; i < types * SCHEMA_FIELDS; i++) {
        if (table[2 * i] == FIELD_MESSAGE && table[2 * i + 1] >= types)
            return 0;
    }
    return 1;
}

/* The content of a length-delimited field of a message of ``type`` at ``depth``: a string's UTF-8,
 * a submessage's fields. ``type`` < 0 inside unknown groups: no schema there. */
static inline int check_content(validation_t *v, const uint8_t *buf, const field_t *f, Py_ssize_t type, int depth)
{
    if (type < 0 || f->number >= SCHEMA_FIELDS)
        return 1;
    int kind = v->schema[(type * SCHEMA_FIELDS + f->number) * 2];
    if (kind == FIELD_STRING && !utf8_valid(buf + f->start, f->end - f->start))
        return (v->problem = "a string field is not valid UTF-8"), 0;
    if (kind == FIELD_MESSAGE) {
        Py_ssize_t at = f->start;
        return validate_fields(v, buf, &at, f->end, v->schema[(type * SCHEMA_FIELDS + f->number) * 2 + 1], depth + 1, 0);
    }
    return 1;
}

/* The next field of a message of ``type`` at ``depth`` (or, if ``group`` > 0, of the group numbered
 * ``group`` - 1), read into *f, and its content checked, except that of a length-delimited field
 * numbered ``walked``: the caller walks that one itself. The group's end tag comes back as wire
 * type 4. As upb does, a field number 0 is refused in a message but skipped inside a group. */
static inline __attribute__((always_inline)) int next_checked(validation_t *v, const uint8_t *buf, Py_ssize_t *at, Py_ssize_t stop, Py_ssize_t type, int depth,
                        uint32_t walked, uint32_t group, field_t *f)
{
    f->tag_at = *at;
    f->value = 0;
    if (stop - *at >= 2 && buf[*at] >= 0x08 && buf[*at] < 0x80 && (buf[*at] & 7) == 2 && buf[*at + 1] < 0x80) {
        /* the usual: a one-byte tag and a length below 128 */
        f->number = buf[*at] >> 3;
        f->wire_type = 2;
        f->start = *at + 2;
        f->end = f->start + buf[*at + 1];
        if (f->end > stop)
            return (v->problem = "a length-delimited field runs past its message"), 0;
        *at = f->end;
    } else if (stop - *at >= 9 && buf[*at] >= 0x08 && buf[*at] < 0x80 && (buf[*at] & 7) == 1) {
        /* a one-byte tag and 8 bytes (timestamps) */
        f->number = buf[*at] >> 3;
        f->wire_type = 1;
        *at += 9;
        f->start = f->end = *at;
        return 1;
    } else if (stop - *at >= 2 && buf[*at] >= 0x08 && buf[*at] < 0x80 && (buf[*at] & 7) == 0 && buf[*at + 1] < 0x80) {
        /* a one-byte tag and a one-byte varint (severity, flags) */
        f->number = buf[*at] >> 3;
        f->wire_type = 0;
        f->value = buf[*at + 1];
        *at += 2;
        f->start = f->end = *at;
        return 1;
    } else {
        uint64_t tag, length;
        if (!read_limited(buf, at, stop, 5, &tag) || tag > 0xFFFFFFFFULL)
            return (v->problem = "a field tag is malformed"), 0;
        f->number = (uint32_t)(tag >> 3);
        f->wire_type = (int)(tag & 7);
        if (f->number == 0 && group == 0)
            return (v->problem = "a field has number 0"), 0;
        switch (f->wire_type) {
        case 0:
            if (!read_limited(buf, at, stop, 10, &f->value))
                return (v->problem = "a varint runs past its message or is longer than 10 bytes"), 0;
            break;
        case 1:
        case 5: {
            Py_ssize_t size = f->wire_type == 1 ? 8 : 4;
            if (stop - *at < size)
                return (v->problem = "a fixed-size value runs past its message"), 0;
            *at += size;
            break;
        }
        case 2:
            if (!read_limited(buf, at, stop, 5, &length) || length > (uint64_t)(stop - *at))
                return (v->problem = "a length-delimited field runs past its message"), 0;
            f->start = *at;
            *at += (Py_ssize_t)length;
            f->end = *at;
            break;
        case 3: /* a group (only ever unknown here): its fields up to its end tag */
            if (!validate_fields(v, buf, at, stop, -1, depth + 1, f->number + 1))
                return 0;
            break;
        case 4:
            if (group != 0 && f->number + 1 == group)
                break;
            return (v->problem = "an end-group tag matches no group"), 0;
        default:
            return (v->problem = "a field has wire type 4, 6 or 7 where none may be"), 0;
        }
        if (f->wire_type != 2)
            f->start = f->end = *at;
    }
    if (f->wire_type == 2 && f->number != walked)
        return check_content(v, buf, f, type, depth);
    return 1;
}

/* The fields of a message of ``type`` up to ``stop`` (group == 0), or of the group numbered ``group`` - 1
 * up to and including its end tag; *at is left after them. */
static int validate_fields(validation_t *v, const uint8_t *buf, Py_ssize_t *at, Py_ssize_t stop, Py_ssize_t type, int depth, uint32_t group)
{
    if (depth > MAX_DEPTH)
        return (v->problem = "messages or groups nested more than 100 deep"), 0;
    while (*at < stop) {
        field_t f;
        if (!next_checked(v, buf, at, stop, type, depth, 0, group, &f))
            return 0;
        if (f.wire_type == 4)
            return 1;
    }
    if (group != 0)
        return (v->problem = "a group has no end tag"), 0;
    return 1;
}

/* --- index ----------------------------------------------------------------------------------------- */

typedef struct {
    PyObject *keys;           /* tuple of bytes: the attribute keys to report, a key's id its index */
    const char *kinds;        /* enum kind per key */
    Py_ssize_t nkeys;
    PyObject *health_paths;   /* tuple of bytes: a path key is reported only if its string starts with one */
    long long min_severity;   /* records at or above it (or with only a severity text) may match a rule */
    /* An attribute key is compared only with the keys of its length and first byte (of the first
     * MASKED_KEYS keys; more come only from long custom signature files). */
    uint64_t by_length[64], longer, by_first[256];
    validation_t v;           /* the walk checks what it walks as validate() would */
    Py_ssize_t resource_logs_type, scope_logs_type, record_type, kv_type, any_type; /* in v.schema */
    int string_value_is_string; /* AnyValue's field 1 is a string in the schema (OTLP's string_value) */
    /* At most this many records, and this many ResourceLogs and ScopeLogs, else TooMany: the index
     * keeps a few dozen bytes per message, so a 30 KiB gzip body of 16 million empty ScopeLogs
     * would otherwise cost 1.7 GB and seconds before any limit is looked at. */
    long long max_count;
    long long messages;       /* ResourceLogs and ScopeLogs so far */
    const char *too_many;     /* what passed max_count, when it did */
} wanted_t;

static PyObject *TooMany;     /* processor._wire.TooMany (ValueError) */

typedef struct {
    int key;
    Py_ssize_t start, end;    /* the AnyValue */
} hit_t;

typedef struct {
    PyObject *spans;          /* bytearray: uint32 start, end of each record's content */
    PyObject *trace_ids;
    PyObject *candidates;
    PyObject *user_agents;    /* bytearray: per user-agent attribute, uint32 record, key id, start, end of its
                                 AnyValue (for UserAgentCache.verdicts) */
    PyObject *hits;           /* (record, key id, AnyValue bytes) of every other evidence attribute */
    PyObject *odd;
    PyObject *groups;         /* per ScopeLogs: (resource_logs index, ResourceLogs and ScopeLogs without
                                 their children, first record, count) */
    PyObject *resources;      /* per ResourceLogs: its resource's bytes (every occurrence, joined) */
    Py_ssize_t largest;       /* the largest record's size ... */
    Py_ssize_t most_attributes; /* ... and the most attributes one record has (for the per-record limits) */
} index_t;

/* Keys are short: compared a word at a time (the last word overlapping), without a call. */
static inline int same_bytes(const uint8_t *a, const uint8_t *b, Py_ssize_t n)
{
    uint64_t x, y;
    if (n < 8) {
        for (Py_ssize_t i = 0; i < n; i++)
            if (a[i] != b[i])
                return 0;
        return 1;
    }
    for (Py_ssize_t i = 0; i + 8 <= n; i += 8) {
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y)
            return 0;
    }
    memcpy(&x, a + n - 8, 8);
    memcpy(&y, b + n - 8, 8);
    return x == y;
}

static int key_of(const wanted_t *w, const uint8_t *p, Py_ssize_t n)
{
    uint64_t candidates = n < 64 ? w->by_length[n] : w->longer;
    if (n > 0)
        candidates &= w->by_first[p[0]];
    while (candidates) {
        int i = __builtin_ctzll(candidates);
        candidates &= candidates - 1;
        PyObject *key = PyTuple_GET_ITEM(w->keys, i);
        if (PyBytes_GET_SIZE(key) == n && same_bytes((const uint8_t *)PyBytes_AS_STRING(key), p, n))
            return i;
    }
    for (Py_ssize_t i = MASKED_KEYS; i < w->nkeys; i++) {
        PyObject *key = PyTuple_GET_ITEM(w->keys, i);
        if (PyBytes_GET_SIZE(key) == n && memcmp(PyBytes_AS_STRING(key), p, (size_t)n) == 0)
            return (int)i;
    }
    return -1;
}

/* A path is evidence only if it is a health path (exact, up to a query, fragment or trailing slash):
 * a plain string that does not even start with one is not worth a Python call. */
static int may_be_health_path(const wanted_t *w, const uint8_t *buf, Py_ssize_t start, Py_ssize_t end)
{
    Py_ssize_t at = start;
    uint64_t length;
    if (at >= end || buf[at] != 0x0A)
        return 1; /* not a plain string_value: the classifier decides */
    at++;
    if (!read_varint(buf, &at, end, &length) || at + (Py_ssize_t)length != end)
        return 1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(w->health_paths); i++) {
        PyObject *path = PyTuple_GET_ITEM(w->health_paths, i);
        Py_ssize_t n = PyBytes_GET_SIZE(path);
        if (n <= (Py_ssize_t)length && same_bytes(buf + at, (const uint8_t *)PyBytes_AS_STRING(path), n))
            return 1;
    }
    return 0;
}

static int append_new(PyObject *list, PyObject *item)
{
    if (item == NULL)
        return 0;
    int failed = PyList_Append(list, item);
    Py_DECREF(item);
    return failed == 0;
}

/* One KeyValue at ``depth``, checked as validate() checks it: its key's id (or -1) and its AnyValue;
 * *odd if protobuf would merge it in a way the walk does not model (key or value twice, unusual wire types). */
static int read_attribute(wanted_t *w, const uint8_t *buf, Py_ssize_t start, Py_ssize_t stop, int depth, hit_t *hit, int *odd)
{
    *odd = 0;
    hit->start = hit->end = stop;
    /* What every exporter writes: 0x0a len key [0x12 len value] (lengths in one or two bytes), nothing else. */
    if (stop - start >= 2 && buf[start] == 0x0A && buf[start + 1] < 0x80) {
        Py_ssize_t key_stop = start + 2 + buf[start + 1], value_at = -1;
        if (key_stop == stop)
            value_at = stop; /* no value */
        else if (key_stop + 2 <= stop && buf[key_stop] == 0x12 && buf[key_stop + 1] < 0x80 &&
                 key_stop + 2 + buf[key_stop + 1] == stop)
            value_at = key_stop + 2;
        else if (key_stop + 3 <= stop && buf[key_stop] == 0x12 && buf[key_stop + 1] >= 0x80 && buf[key_stop + 2] < 0x80 &&
                 key_stop + 3 + ((buf[key_stop + 1] & 0x7F) | (Py_ssize_t)buf[key_stop + 2] << 7) == stop)
            value_at = key_stop + 3;
        if (value_at >= 0) {
            if (!utf8_valid(buf + start + 2, buf[start + 1]))
                return (w->v.problem = "a string field is not valid UTF-8"), 0;
            if (w->string_value_is_string && stop - value_at >= 2 && buf[value_at] == 0x0A && buf[value_at + 1] < 0x80 &&
                value_at + 2 + buf[value_at + 1] == stop) {
                /* The usual value, one string_value (length below 128): its UTF-8 is all validate_fields
                 * would check, without its loop and schema lookups (~94 instructions a value there). */
                if (!utf8_valid(buf + value_at + 2, buf[value_at + 1]))
                    return (w->v.problem = "a string field is not valid UTF-8"), 0;
            } else {
                Py_ssize_t at = value_at;
                if (!validate_fields(&w->v, buf, &at, stop, w->any_type, depth + 1, 0))
                    return 0;
            }
            hit->start = value_at;
            hit->key = key_of(w, buf + start + 2, buf[start + 1]);
            return 1;
        }
    }
    Py_ssize_t at = start, key_start = start, key_end = start;
    int keys = 0, values = 0;
    while (at < stop) {
        field_t f;
        if (!next_checked(&w->v, buf, &at, stop, w->kv_type, depth, 0, 0, &f))
            return 0;
        if (f.number == 1) {
            if (f.wire_type != 2 || keys++)
                *odd = 1;
            key_start = f.start;
            key_end = f.end;
        } else if (f.number == 2) {
            if (f.wire_type != 2 || values++)
                *odd = 1;
            hit->start = f.start;
            hit->end = f.end;
        }
    }
    hit->key = key_of(w, buf + key_start, key_end - key_start);
    return 1;
}

/* One LogRecord at ``depth``; 0 with w->v.problem set if it is not valid, or with an exception. */
static int index_record(wanted_t *w, const uint8_t *buf, Py_ssize_t start, Py_ssize_t stop, int depth, long record, index_t *out)
{
    Py_ssize_t at = start;
    Py_ssize_t trace_start = start, trace_end = start;
    long long severity = 0;
    int has_text = 0, odd = 0, nhits = 0;
    Py_ssize_t attributes = 0;
    hit_t hits[MAX_HITS];
    while (at < stop) {
        field_t f;
        if (!next_checked(&w->v, buf, &at, stop, w->record_type, depth, 6, 0, &f))
            return 0;
        switch (f.number) {
        case 2: /* severity_number: an int32 enum; the last occurrence wins */
            if (f.wire_type != 0)
                odd = 1;
            severity = (long long)(int32_t)(uint32_t)f.value;
            break;
        case 3: /* severity_text */
            if (f.wire_type != 2)
                odd = 1;
            has_text = f.end > f.start;
            break;
        case 6: { /* attributes */
            hit_t hit;
            int odd_attribute;
            if (f.wire_type != 2) {
                odd = 1;
                break;
            }
            attributes++;
            if (!read_attribute(w, buf, f.start, f.end, depth + 1, &hit, &odd_attribute))
                return 0;
            if (odd_attribute) {
                odd = 1;
                break;
            }
            if (hit.key < 0 || odd)
                break;
            if (w->kinds[hit.key] == KIND_ODD || nhits == MAX_HITS) {
                odd = 1;
                break;
            }
            if (w->kinds[hit.key] == KIND_PATH && !may_be_health_path(w, buf, hit.start, hit.end))
                break;
            hits[nhits++] = hit;
            break;
        }
        case 9: /* trace_id */
            if (f.wire_type != 2)
                odd = 1;
            trace_start = f.start;
            trace_end = f.end;
            break;
        default:
            break;
        }
    }
    if (stop - start > out->largest)
        out->largest = stop - start;
    if (attributes > out->most_attributes)
        out->most_attributes = attributes;
    uint32_t span[2] = {(uint32_t)start, (uint32_t)stop};
    Py_ssize_t used = PyByteArray_GET_SIZE(out->spans);
    if (PyByteArray_Resize(out->spans, used + (Py_ssize_t)sizeof span) < 0)
        return 0;
    memcpy(PyByteArray_AS_STRING(out->spans) + used, span, sizeof span);
    if (!append_new(out->trace_ids, PyBytes_FromStringAndSize((const char *)buf + trace_start, trace_end - trace_start)))
        return 0;
    if (severity >= w->min_severity || (severity == 0 && has_text)) {
        if (!append_new(out->candidates, PyLong_FromLong(record)))
            return 0;
    }
    if (odd)
        return append_new(out->odd, PyLong_FromLong(record));
    for (int i = 0; i < nhits; i++) {
        Py_ssize_t n = hits[i].end - hits[i].start;
        if (w->kinds[hits[i].key] == KIND_USER_AGENT) {
            uint32_t entry[4] = {(uint32_t)record, (uint32_t)hits[i].key, (uint32_t)hits[i].start, (uint32_t)hits[i].end};
            Py_ssize_t used = PyByteArray_GET_SIZE(out->user_agents);
            if (PyByteArray_Resize(out->user_agents, used + (Py_ssize_t)sizeof entry) < 0)
                return 0;
            memcpy(PyByteArray_AS_STRING(out->user_agents) + used, entry, sizeof entry);
            continue;
        }
        PyObject *value = PyBytes_FromStringAndSize((const char *)buf + hits[i].start, n);
        if (value == NULL || !append_new(out->hits, Py_BuildValue("liN", record, hits[i].key, value)))
            return 0;
    }
    return 1;
}

/* Appends a field as it came, buf[f->tag_at:at], to *skeleton: the message without its children, which
 * is what a held record keeps of the ResourceLogs and ScopeLogs it came in. Built on the walk that
 * checks the message, not by a second one: a ScopeLogs holds hundreds of records and one or two
 * other fields. An unknown group is kept whole. 0 with an exception if out of memory. */
static inline int keep_field(PyObject **skeleton, const uint8_t *buf, const field_t *f, Py_ssize_t at)
{
    PyBytes_ConcatAndDel(skeleton, PyBytes_FromStringAndSize((const char *)buf + f->tag_at, at - f->tag_at));
    return *skeleton != NULL;
}

static int index_scope_logs(wanted_t *w, const uint8_t *buf, Py_ssize_t start, Py_ssize_t stop, int depth, long *records,
                            index_t *out, PyObject **skeleton)
{
    Py_ssize_t at = start;
    while (at < stop) {
        field_t f;
        if (!next_checked(&w->v, buf, &at, stop, w->scope_logs_type, depth, 2, 0, &f))
            return 0;
        if (f.number == 2 && f.wire_type == 2) {
            if (*records >= w->max_count)
                return (w->too_many = "log records"), 0;
            if (!index_record(w, buf, f.start, f.end, depth + 1, *records, out))
                return 0;
            (*records)++;
        } else if (!keep_field(skeleton, buf, &f, at)) {
            return 0;
        }
    }
    return 1;
}

typedef struct {
    PyObject *skeleton;
    long first, count;
} scope_t;

static int index_resource_logs(wanted_t *w, const uint8_t *buf, Py_ssize_t start, Py_ssize_t stop, int depth, long which,
                               long *records, index_t *out)
{
    Py_ssize_t at = start, nscopes = 0, capacity = 0;
    scope_t *scopes = NULL;
    PyObject *resource = PyBytes_FromStringAndSize(NULL, 0), *skeleton = PyBytes_FromStringAndSize(NULL, 0);
    int ok = resource != NULL && skeleton != NULL;
    while (ok && at < stop) {
        field_t f;
        if (!next_checked(&w->v, buf, &at, stop, w->resource_logs_type, depth, 2, 0, &f)) {
            ok = 0;
        } else if (f.number == 2 && f.wire_type == 2) {
            long first = *records;
            if (++w->messages > w->max_count) {
                w->too_many = "ResourceLogs and ScopeLogs";
                ok = 0;
                break;
            }
            if (nscopes == capacity) {
                capacity = capacity ? 2 * capacity : 4;
                scope_t *grown = PyMem_Realloc(scopes, (size_t)capacity * sizeof *scopes);
                if (grown == NULL) {
                    PyErr_NoMemory();
                    ok = 0;
                    break;
                }
                scopes = grown;
            }
            scope_t *scope = &scopes[nscopes];
            if ((scope->skeleton = PyBytes_FromStringAndSize(NULL, 0)) == NULL) {
                ok = 0;
                break;
            }
            nscopes++;
            ok = index_scope_logs(w, buf, f.start, f.end, depth + 1, records, out, &scope->skeleton);
            scope->first = first;
            scope->count = *records - first;
        } else {
            if (f.number == 1 && f.wire_type == 2) {
                PyBytes_ConcatAndDel(&resource, PyBytes_FromStringAndSize((const char *)buf + f.start, f.end - f.start));
                ok = resource != NULL;
            }
            ok = ok && keep_field(&skeleton, buf, &f, at);
        }
    }
    /* The groups only once the whole ResourceLogs is known to be valid. */
    for (Py_ssize_t i = 0; ok && i < nscopes; i++)
        ok = scopes[i].skeleton != NULL &&
             append_new(out->groups, Py_BuildValue("lOOll", which, skeleton, scopes[i].skeleton, scopes[i].first, scopes[i].count));
    for (Py_ssize_t i = 0; i < nscopes; i++)
        Py_XDECREF(scopes[i].skeleton);
    PyMem_Free(scopes);
    Py_XDECREF(skeleton);
    if (!ok) {
        Py_XDECREF(resource);
        return 0;
    }
    return append_new(out->resources, resource);
}

/* The message type of field ``number`` of ``type`` in the schema, or -1 if it is not a message field. */
static Py_ssize_t field_type(const uint8_t *schema, Py_ssize_t types, Py_ssize_t type, uint32_t number)
{
    if (type < 0 || type >= types || schema[(type * SCHEMA_FIELDS + number) * 2] != FIELD_MESSAGE)
        return -1;
    return schema[(type * SCHEMA_FIELDS + number) * 2 + 1];
}

static PyObject *wire_index(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer payload;
    wanted_t w;
    PyObject *kinds, *schema;
    if (!PyArg_ParseTuple(args, "y*O!O!O!O!LL", &payload, &PyBytes_Type, &schema, &PyTuple_Type, &w.keys, &PyBytes_Type,
                          &kinds, &PyTuple_Type, &w.health_paths, &w.min_severity, &w.max_count))
        return NULL;
    w.messages = 0;
    w.too_many = NULL;
    w.nkeys = PyTuple_GET_SIZE(w.keys);
    w.kinds = PyBytes_AS_STRING(kinds);
    w.v.schema = (const uint8_t *)PyBytes_AS_STRING(schema);
    w.v.problem = NULL;
    PyObject *result = NULL;
    Py_ssize_t types = PyBytes_GET_SIZE(schema) / (SCHEMA_FIELDS * 2);
    if (!schema_valid(schema)) {
        PyErr_SetString(PyExc_ValueError, "schema: 64 bytes per message type, the request's first, every message field naming one");
        goto done;
    }
    /* request.resource_logs, .scope_logs, .log_records, .attributes, KeyValue.value */
    w.resource_logs_type = field_type(w.v.schema, types, 0, 1);
    w.scope_logs_type = field_type(w.v.schema, types, w.resource_logs_type, 2);
    w.record_type = field_type(w.v.schema, types, w.scope_logs_type, 2);
    w.kv_type = field_type(w.v.schema, types, w.record_type, 6);
    w.any_type = field_type(w.v.schema, types, w.kv_type, 2);
    if (w.any_type < 0) {
        PyErr_SetString(PyExc_ValueError, "schema: not that of an ExportLogsServiceRequest");
        goto done;
    }
    w.string_value_is_string = w.v.schema[(w.any_type * SCHEMA_FIELDS + 1) * 2] == FIELD_STRING;
    if (w.nkeys > MAX_KEYS || PyBytes_GET_SIZE(kinds) != w.nkeys) {
        PyErr_SetString(PyExc_ValueError, "keys and kinds must have the same length, at most 250");
        goto done;
    }
    memset(w.by_length, 0, sizeof w.by_length);
    memset(w.by_first, 0, sizeof w.by_first);
    w.longer = 0;
    for (Py_ssize_t i = 0; i < w.nkeys; i++) {
        PyObject *key = PyTuple_GET_ITEM(w.keys, i);
        if (!PyBytes_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "keys must be bytes");
            goto done;
        }
        if (i >= MASKED_KEYS)
            continue;
        Py_ssize_t n = PyBytes_GET_SIZE(key);
        uint64_t bit = (uint64_t)1 << i;
        if (n < 64)
            w.by_length[n] |= bit;
        else
            w.longer |= bit;
        if (n > 0)
            w.by_first[(uint8_t)PyBytes_AS_STRING(key)[0]] |= bit;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(w.health_paths); i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(w.health_paths, i))) {
            PyErr_SetString(PyExc_TypeError, "health paths must be bytes");
            goto done;
        }
    }
    if (payload.len > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "request larger than 4 GiB");
        goto done;
    }
    index_t out = {
        PyByteArray_FromStringAndSize(NULL, 0), PyList_New(0), PyList_New(0), PyByteArray_FromStringAndSize(NULL, 0),
        PyList_New(0), PyList_New(0), PyList_New(0), PyList_New(0), 0, 0,
    };
    PyObject **parts = &out.spans;
    int made = 1;
    for (int i = 0; i < 8; i++)
        made &= parts[i] != NULL;
    if (made) {
        const uint8_t *buf = payload.buf;
        Py_ssize_t at = 0, stop = payload.len;
        long records = 0, which = 0;
        int ok = 1;
        while (ok && at < stop) {
            field_t f;
            if (!next_checked(&w.v, buf, &at, stop, 0, 0, 1, 0, &f))
                ok = 0;
            else if (f.number == 1 && f.wire_type == 2 && ++w.messages > w.max_count)
                ok = 0, w.too_many = "ResourceLogs and ScopeLogs";
            else if (f.number == 1 && f.wire_type == 2)
                ok = index_resource_logs(&w, buf, f.start, f.end, 1, which++, &records, &out);
        }
        if (w.too_many != NULL && !PyErr_Occurred())
            PyErr_Format(TooMany, "more than %lld %s in one request", w.max_count, w.too_many);
        else if (ok)
            result = Py_BuildValue("OOOOOOOOnn", out.spans, out.trace_ids, out.candidates, out.user_agents, out.hits, out.odd,
                                   out.groups, out.resources, out.largest, out.most_attributes);
        else if (!PyErr_Occurred()) /* not valid: what is wrong, instead of the index */
            result = PyUnicode_FromString(w.v.problem);
    }
    for (int i = 0; i < 8; i++)
        Py_XDECREF(parts[i]);
done:
    PyBuffer_Release(&payload);
    return result;
}

/* --- assemble -------------------------------------------------------------------------------------- */
/* Two passes over the request's structure: the first sizes every ResourceLogs and ScopeLogs as it
 * will be written (in the order they occur), the second writes them with those sizes as length
 * prefixes. Records are not walked: each is copied whole, with its suffix. */

typedef struct {
    PyObject *records;        /* list: per record, bytes to append, None to leave it out, or (bytes,) to replace it */
    PyObject *resources;      /* dict: ResourceLogs index -> its resource's new bytes; or None */
    Py_ssize_t next_record;
    Py_ssize_t *sizes;        /* per ResourceLogs and ScopeLogs, in order of occurrence: its new size */
    Py_ssize_t nsizes, capacity, next_size;
    uint8_t *out;             /* NULL while sizing */
    Py_ssize_t at;
} assembly_t;

static Py_ssize_t varint_size(uint64_t n)
{
    Py_ssize_t size = 1;
    while (n >= 0x80) {
        n >>= 7;
        size++;
    }
    return size;
}

static void put(assembly_t *a, const void *p, Py_ssize_t n)
{
    if (a->out != NULL && n > 0) /* (p may be NULL when there is nothing to copy: memcpy must not see it) */
        memcpy(a->out + a->at, p, (size_t)n);
    a->at += n;
}

static void put_varint(assembly_t *a, uint64_t n)
{
    uint8_t tmp[10];
    Py_ssize_t i = 0;
    while (n >= 0x80) {
        tmp[i++] = (uint8_t)(n & 0x7F) | 0x80;
        n >>= 7;
    }
    tmp[i++] = (uint8_t)n;
    put(a, tmp, i);
}

/* Sizing: reserve the next slot; writing: take the next size. */
static Py_ssize_t open_message(assembly_t *a, uint8_t tag)
{
    if (a->out == NULL) {
        if (a->nsizes == a->capacity) {
            Py_ssize_t capacity = a->capacity ? 2 * a->capacity : 64;
            Py_ssize_t *sizes = PyMem_Realloc(a->sizes, (size_t)capacity * sizeof *sizes);
            if (sizes == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            a->sizes = sizes;
            a->capacity = capacity;
        }
        a->sizes[a->nsizes] = a->at; /* where its content starts; the size once it is known */
        return a->nsizes++;
    }
    Py_ssize_t size = a->sizes[a->next_size++];
    put(a, &tag, 1);
    put_varint(a, (uint64_t)size);
    return 0;
}

static void close_message(assembly_t *a, Py_ssize_t slot)
{
    if (a->out == NULL) {
        Py_ssize_t size = a->at - a->sizes[slot];
        a->sizes[slot] = size;
        a->at += 1 + varint_size((uint64_t)size); /* its tag and length prefix */
    }
}

static int put_record(assembly_t *a, const uint8_t *buf, Py_ssize_t start, Py_ssize_t stop)
{
    if (a->next_record >= PyList_GET_SIZE(a->records)) {
        PyErr_SetString(PyExc_ValueError, "fewer records given than the request has");
        return 0;
    }
    PyObject *item = PyList_GET_ITEM(a->records, a->next_record++);
    if (item == Py_None)
        return 1;
    const char *head = (const char *)buf + start, *tail = NULL;
    Py_ssize_t head_size = stop - start, tail_size = 0;
    if (PyBytes_CheckExact(item)) {
        tail = PyBytes_AS_STRING(item);
        tail_size = PyBytes_GET_SIZE(item);
    } else if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 1 && PyBytes_CheckExact(PyTuple_GET_ITEM(item, 0))) {
        head = PyBytes_AS_STRING(PyTuple_GET_ITEM(item, 0));
        head_size = PyBytes_GET_SIZE(PyTuple_GET_ITEM(item, 0));
    } else {
        PyErr_SetString(PyExc_TypeError, "a record's entry must be bytes, None or (bytes,)");
        return 0;
    }
    uint8_t tag = 0x12; /* ScopeLogs.log_records */
    put(a, &tag, 1);
    put_varint(a, (uint64_t)(head_size + tail_size));
    put(a, head, head_size);
    put(a, tail, tail_size);
    return 1;
}

static int put_scope_logs(assembly_t *a, const uint8_t *buf, Py_ssize_t start, Py_ssize_t stop)
{
    Py_ssize_t slot = open_message(a, 0x12); /* ResourceLogs.scope_logs */
    if (slot < 0)
        return 0;
    Py_ssize_t at = start;
    while (at < stop) {
        field_t f;
        if (!next_field(buf, &at, stop, &f))
            return malformed();
        if (f.number == 2 && f.wire_type == 2) {
            if (!put_record(a, buf, f.start, f.end))
                return 0;
        } else {
            put(a, buf + f.tag_at, at - f.tag_at);
        }
    }
    close_message(a, slot);
    return 1;
}

static int put_resource_logs(assembly_t *a, const uint8_t *buf, Py_ssize_t start, Py_ssize_t stop, long which)
{
    PyObject *resource = NULL;
    if (a->resources != Py_None) {
        PyObject *key = PyLong_FromLong(which);
        if (key == NULL)
            return 0;
        resource = PyDict_GetItemWithError(a->resources, key);
        Py_DECREF(key);
        if (resource == NULL && PyErr_Occurred())
            return 0;
        if (resource != NULL && !PyBytes_CheckExact(resource)) {
            PyErr_SetString(PyExc_TypeError, "a resource's new bytes must be bytes");
            return 0;
        }
    }
    Py_ssize_t slot = open_message(a, 0x0A); /* ExportLogsServiceRequest.resource_logs */
    if (slot < 0)
        return 0;
    int resource_written = 0;
    Py_ssize_t at = start;
    while (at < stop) {
        field_t f;
        if (!next_field(buf, &at, stop, &f))
            return malformed();
        if (f.number == 1 && f.wire_type == 2 && resource != NULL) {
            /* Every occurrence merged into one: protobuf merges them the same way. */
            if (!resource_written++) {
                uint8_t tag = 0x0A;
                put(a, &tag, 1);
                put_varint(a, (uint64_t)PyBytes_GET_SIZE(resource));
                put(a, PyBytes_AS_STRING(resource), PyBytes_GET_SIZE(resource));
            }
        } else if (f.number == 2 && f.wire_type == 2) {
            if (!put_scope_logs(a, buf, f.start, f.end))
                return 0;
        } else {
            put(a, buf + f.tag_at, at - f.tag_at);
        }
    }
    close_message(a, slot);
    return 1;
}

static int put_request(assembly_t *a, const uint8_t *buf, Py_ssize_t stop)
{
    Py_ssize_t at = 0;
    long which = 0;
    while (at < stop) {
        field_t f;
        if (!next_field(buf, &at, stop, &f))
            return malformed();
        if (f.number == 1 && f.wire_type == 2) {
            if (!put_resource_logs(a, buf, f.start, f.end, which++))
                return 0;
        } else {
            put(a, buf + f.tag_at, at - f.tag_at);
        }
    }
    return 1;
}

static PyObject *wire_assemble(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer payload;
    assembly_t a = {0};
    if (!PyArg_ParseTuple(args, "y*O!O", &payload, &PyList_Type, &a.records, &a.resources))
        return NULL;
    PyObject *result = NULL;
    if (a.resources != Py_None && !PyDict_Check(a.resources)) {
        PyErr_SetString(PyExc_TypeError, "resources must be a dict or None");
        goto done;
    }
    if (!put_request(&a, payload.buf, payload.len))
        goto done;
    if (a.next_record != PyList_GET_SIZE(a.records)) {
        PyErr_SetString(PyExc_ValueError, "more records given than the request has");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, a.at);
    if (result == NULL)
        goto done;
    a.out = (uint8_t *)PyBytes_AS_STRING(result);
    a.at = 0;
    a.next_record = 0;
    if (!put_request(&a, payload.buf, payload.len))
        Py_CLEAR(result);
done:
    PyMem_Free(a.sizes);
    PyBuffer_Release(&payload);
    return result;
}

/* --- verdicts --------------------------------------------------------------------------------------- */

/* Per record: its own verdict (``own``: record index -> verdict), else its trace's (``inherited``: a
 * TraceTable, trace id -> verdict), else ``fallback``; returns each record's enrichment (the verdict's
 * ``wire_typed`` bytes) and how many records each verdict decided. A request has a handful of
 * distinct verdicts: their bytes and counts are kept in a small table, not looked up per record. */
#define RESOLVE_TABLE 16
#define RESOLVE_AHEAD 8 /* records: a trace's slot is asked for this far ahead, so lookups' misses overlap */

static PyObject *wire_resolve(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *trace_ids, *own, *inherited, *fallback;
    if (!PyArg_ParseTuple(args, "O!O!OO", &PyList_Type, &trace_ids, &PyDict_Type, &own, &inherited, &fallback))
        return NULL;
    if (!trace_table_check(inherited)) {
        PyErr_SetString(PyExc_TypeError, "resolve: inherited must be a TraceTable");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(trace_ids);
    PyObject **mine = PyMem_Calloc(n ? (size_t)n : 1, sizeof *mine); /* borrowed from own */
    PyObject *forward = PyList_New(n), *counts = PyDict_New(), *result = NULL;
    PyObject *seen[RESOLVE_TABLE], *wire[RESOLVE_TABLE] = {NULL};
    Py_ssize_t tally[RESOLVE_TABLE], distinct = 0;
    if (mine == NULL || forward == NULL || counts == NULL) {
        if (mine == NULL)
            PyErr_NoMemory();
        goto done;
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(own, &pos, &key, &value)) {
        Py_ssize_t i = PyLong_AsSsize_t(key);
        if (i == -1 && PyErr_Occurred())
            goto done;
        if (i < 0 || i >= n) {
            PyErr_SetString(PyExc_IndexError, "own: a record index past the request");
            goto done;
        }
        mine[i] = value;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *verdict = mine[i];
        if (i + RESOLVE_AHEAD < n && mine[i + RESOLVE_AHEAD] == NULL)
            trace_table_prefetch(inherited, PyList_GET_ITEM(trace_ids, i + RESOLVE_AHEAD));
        if (verdict == NULL) {
            verdict = trace_table_get(inherited, PyList_GET_ITEM(trace_ids, i));
            if (verdict == NULL)
                verdict = fallback;
        }
        Py_ssize_t t = 0;
        while (t < distinct && seen[t] != verdict)
            t++;
        if (t == distinct) {
            if (distinct == RESOLVE_TABLE) { /* unusual: many distinct verdicts in one request */
                PyObject *bytes = PyObject_GetAttrString(verdict, "wire_typed");
                if (bytes == NULL)
                    goto done;
                PyList_SET_ITEM(forward, i, bytes);
                PyObject *count = PyDict_GetItemWithError(counts, verdict);
                if (count == NULL && PyErr_Occurred())
                    goto done;
                PyObject *next = PyLong_FromSsize_t(count == NULL ? 1 : PyLong_AsSsize_t(count) + 1);
                if (next == NULL || PyDict_SetItem(counts, verdict, next) < 0) {
                    Py_XDECREF(next);
                    goto done;
                }
                Py_DECREF(next);
                continue;
            }
            wire[t] = PyObject_GetAttrString(verdict, "wire_typed");
            if (wire[t] == NULL)
                goto done;
            seen[t] = verdict;
            tally[t] = 0;
            distinct++;
        }
        tally[t]++;
        PyList_SET_ITEM(forward, i, Py_NewRef(wire[t]));
    }
    for (Py_ssize_t t = 0; t < distinct; t++) {
        PyObject *count = PyLong_FromSsize_t(tally[t]);
        if (count == NULL || PyDict_SetItem(counts, seen[t], count) < 0) {
            Py_XDECREF(count);
            goto done;
        }
        Py_DECREF(count);
    }
    result = PyTuple_Pack(2, forward, counts);
done:
    for (Py_ssize_t t = 0; t < RESOLVE_TABLE; t++)
        Py_XDECREF(wire[t]);
    PyMem_Free(mine);
    Py_XDECREF(forward);
    Py_XDECREF(counts);
    return result;
}

/* --- rule prefilter ---------------------------------------------------------------------------------- */

/* Whether one of ``group`` (a tuple of bytes) occurs in p[0:n]; -1 with an exception if it is not a
 * tuple of bytes. */
static int any_needle(PyObject *group, const char *p, Py_ssize_t n)
{
    if (!PyTuple_Check(group)) {
        PyErr_SetString(PyExc_TypeError, "a needle group must be a tuple of bytes");
        return -1;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(group); k++) {
        PyObject *needle = PyTuple_GET_ITEM(group, k);
        if (!PyBytes_Check(needle)) {
            PyErr_SetString(PyExc_TypeError, "a needle must be bytes");
            return -1;
        }
        if (memmem(p, (size_t)n, PyBytes_AS_STRING(needle), (size_t)PyBytes_GET_SIZE(needle)) != NULL)
            return 1;
    }
    return 0;
}

/* The records (of ``records``, in their order) some rule may match: a record holding a backslash,
 * or, for some rule, one needle of each of its groups. ``rules``: per rule, a tuple of groups. */
static PyObject *wire_may_match(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer payload, spans;
    PyObject *records, *rules;
    if (!PyArg_ParseTuple(args, "y*y*O!O!", &payload, &spans, &PyList_Type, &records, &PyTuple_Type, &rules))
        return NULL;
    PyObject *result = PyList_New(0);
    const uint32_t *span = spans.buf;
    Py_ssize_t count = spans.len / (Py_ssize_t)(2 * sizeof(uint32_t));
    for (Py_ssize_t i = 0; result != NULL && i < PyList_GET_SIZE(records); i++) {
        PyObject *item = PyList_GET_ITEM(records, i);
        Py_ssize_t record = PyLong_AsSsize_t(item);
        if (record == -1 && PyErr_Occurred()) {
            Py_CLEAR(result);
            break;
        }
        if (record < 0 || record >= count || span[2 * record] > span[2 * record + 1] || span[2 * record + 1] > payload.len) {
            PyErr_SetString(PyExc_ValueError, "a record outside the payload");
            Py_CLEAR(result);
            break;
        }
        const char *p = (const char *)payload.buf + span[2 * record];
        Py_ssize_t n = span[2 * record + 1] - span[2 * record];
        int maybe = memchr(p, '\\', (size_t)n) != NULL; /* a JSON text body may spell any value with escapes */
        for (Py_ssize_t r = 0; !maybe && r < PyTuple_GET_SIZE(rules); r++) {
            PyObject *groups = PyTuple_GET_ITEM(rules, r);
            if (!PyTuple_Check(groups)) {
                PyErr_SetString(PyExc_TypeError, "a rule's needles must be a tuple of groups");
                maybe = -1;
                break;
            }
            int all = 1;
            for (Py_ssize_t g = 0; all == 1 && g < PyTuple_GET_SIZE(groups); g++)
                all = any_needle(PyTuple_GET_ITEM(groups, g), p, n);
            maybe = all;
        }
        if (maybe < 0 || (maybe && PyList_Append(result, item) < 0))
            Py_CLEAR(result);
    }
    PyBuffer_Release(&payload);
    PyBuffer_Release(&spans);
    return result;
}

/* Whether p[0:n] is one of ``keys`` (a tuple of bytes). */
static int is_one_of(PyObject *keys, const uint8_t *p, Py_ssize_t n)
{
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(keys); k++) {
        PyObject *key = PyTuple_GET_ITEM(keys, k);
        if (PyBytes_GET_SIZE(key) == n && memcmp(PyBytes_AS_STRING(key), p, (size_t)n) == 0)
            return 1;
    }
    return 0;
}

/* What a downgrade rule reads of one serialized LogRecord (already checked), when that is little:
 * (severity_number, severity_text, body) if its body is given once, as one string_value and
 * nothing else, and none of its attributes has a key in ``keys`` or a key given twice; else None
 * (the caller decodes the record). Fields of an unexpected wire type give None too. */
static PyObject *wire_record_text(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer record;
    PyObject *keys;
    if (!PyArg_ParseTuple(args, "y*O!", &record, &PyTuple_Type, &keys))
        return NULL;
    PyObject *result = NULL;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(keys); k++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(keys, k))) {
            PyErr_SetString(PyExc_TypeError, "keys must be a tuple of bytes");
            goto done;
        }
    }
    const uint8_t *buf = record.buf;
    Py_ssize_t at = 0, stop = record.len;
    long number = 0;
    Py_ssize_t text_start = 0, text_end = 0, body_start = 0, body_end = 0;
    int bodies = 0;
    while (at < stop) {
        field_t f;
        if (!next_field(buf, &at, stop, &f))
            goto simple_no;
        switch (f.number) {
        case 2: /* severity_number */
            if (f.wire_type != 0)
                goto simple_no;
            number = (long)(int32_t)(uint32_t)f.value;
            break;
        case 3: /* severity_text */
        case 9: /* trace_id: the caller takes the index's, which is upb's when every occurrence is bytes */
            if (f.wire_type != 2)
                goto simple_no;
            if (f.number == 3)
                text_start = f.start, text_end = f.end;
            break;
        case 5: /* body: an AnyValue holding exactly one field, string_value */
            if (f.wire_type != 2 || ++bodies > 1)
                goto simple_no;
            body_start = f.start;
            body_end = f.end;
            break;
        case 6: { /* attributes: KeyValue, its key once */
            if (f.wire_type != 2)
                goto simple_no;
            Py_ssize_t in = f.start;
            int named = 0;
            while (in < f.end) {
                field_t kv;
                if (!next_field(buf, &in, f.end, &kv))
                    goto simple_no;
                if (kv.number != 1)
                    continue;
                if (kv.wire_type != 2 || named++ || is_one_of(keys, buf + kv.start, kv.end - kv.start))
                    goto simple_no;
            }
            break;
        }
        default:
            break;
        }
    }
    if (bodies != 1)
        goto simple_no;
    {
        Py_ssize_t in = body_start;
        field_t value;
        if (!next_field(buf, &in, body_end, &value) || value.number != 1 || value.wire_type != 2 || in != body_end)
            goto simple_no;
        result = Py_BuildValue("(ls#s#)", number, (const char *)buf + text_start, text_end - text_start,
                               (const char *)buf + value.start, value.end - value.start);
        if (result == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear(); /* not UTF-8 (the check would have refused it): let upb say what it is */
            goto simple_no;
        }
        goto done;
    }
simple_no:
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&record);
    return result;
}

/* prefix, then each of contents as a length-delimited field `number`: how held records are put back
 * into ScopeLogs, ResourceLogs and a request without a call per record into Python. */
static PyObject *wire_fields(PyObject *Py_UNUSED(module), PyObject *args)
{
    int number;
    Py_buffer prefix;
    PyObject *contents;
    if (!PyArg_ParseTuple(args, "iy*O!", &number, &prefix, &PyList_Type, &contents))
        return NULL;
    PyObject *result = NULL;
    if (number < 1 || number > 15) {
        PyErr_SetString(PyExc_ValueError, "fields: the field number must be 1 to 15 (a one-byte tag)");
        goto done;
    }
    Py_ssize_t n = PyList_GET_SIZE(contents), size = prefix.len;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *content = PyList_GET_ITEM(contents, i);
        if (!PyBytes_Check(content)) {
            PyErr_SetString(PyExc_TypeError, "fields: contents must be a list of bytes");
            goto done;
        }
        size += 1 + varint_size((uint64_t)PyBytes_GET_SIZE(content)) + PyBytes_GET_SIZE(content);
    }
    result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL)
        goto done;
    assembly_t a = {.out = (uint8_t *)PyBytes_AS_STRING(result)};
    uint8_t tag = (uint8_t)(number << 3 | 2);
    put(&a, prefix.buf, prefix.len);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *content = PyList_GET_ITEM(contents, i);
        put(&a, &tag, 1);
        put_varint(&a, (uint64_t)PyBytes_GET_SIZE(content));
        put(&a, PyBytes_AS_STRING(content), PyBytes_GET_SIZE(content));
    }
done:
    PyBuffer_Release(&prefix);
    return result;
}

/* Fields `number` of wire type 2 in buf[start:stop], counted; -1 if the framing is broken. */
static long count_fields(const uint8_t *buf, Py_ssize_t start, Py_ssize_t stop, uint32_t number,
                         long (*inner)(const uint8_t *, Py_ssize_t, Py_ssize_t))
{
    long count = 0;
    Py_ssize_t at = start;
    while (at < stop) {
        field_t f;
        if (!next_field(buf, &at, stop, &f))
            return -1;
        if (f.number != number || f.wire_type != 2)
            continue;
        long found = inner == NULL ? 1 : inner(buf, f.start, f.end);
        if (found < 0)
            return -1;
        count += found;
    }
    return count;
}

static long scope_logs_records(const uint8_t *buf, Py_ssize_t start, Py_ssize_t stop)
{
    return count_fields(buf, start, stop, 2, NULL); /* ScopeLogs.log_records */
}

static long resource_logs_records(const uint8_t *buf, Py_ssize_t start, Py_ssize_t stop)
{
    return count_fields(buf, start, stop, 2, scope_logs_records); /* ResourceLogs.scope_logs */
}

/* Per ResourceLogs, in order, its records: from the fields' tags and lengths alone, which is all the
 * export's split needs to cut a request between ResourceLogs. index() would also check every string
 * and value, which costs as much again as the pipeline's own walk: the request was checked when it came.
 * A record is what assemble() writes and index() reports: a field 2 of wire type 2 of a ScopeLogs. */
static PyObject *wire_record_counts(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer payload;
    if (!PyArg_ParseTuple(args, "y*", &payload))
        return NULL;
    const uint8_t *buf = payload.buf;
    PyObject *counts = PyList_New(0);
    Py_ssize_t at = 0;
    while (counts != NULL && at < payload.len) {
        field_t f;
        long records = 0;
        if (!next_field(buf, &at, payload.len, &f) ||
            (f.number == 1 && f.wire_type == 2 && (records = resource_logs_records(buf, f.start, f.end)) < 0)) {
            Py_SETREF(counts, PyUnicode_FromString("broken framing: a field's tag, length or group does not fit its message"));
            break;
        }
        if (f.number != 1 || f.wire_type != 2) /* not ExportLogsServiceRequest.resource_logs */
            continue;
        PyObject *count = PyLong_FromLong(records);
        if (count == NULL || PyList_Append(counts, count) < 0)
            Py_CLEAR(counts);
        Py_XDECREF(count);
    }
    PyBuffer_Release(&payload);
    return counts;
}

static PyMethodDef methods[] = {
    {"index", wire_index, METH_VARARGS,
     "index(payload, schema, keys, kinds, health_paths, min_severity, max_count) -> (spans, trace_ids, candidates, "
     "user_agents, hits, odd, groups, resources, largest, most_attributes); or, if upb would not decode payload, what is "
     "wrong; TooMany past max_count records, or max_count ResourceLogs and ScopeLogs"},
    {"assemble", wire_assemble, METH_VARARGS,
     "assemble(payload, records, resources) -> bytes: the request with each record's bytes appended, replaced or left out"},
    {"resolve", wire_resolve, METH_VARARGS,
     "resolve(trace_ids, own, inherited, fallback) -> (per record its verdict's wire_typed bytes, {verdict: records})"},
    {"may_match", wire_may_match, METH_VARARGS,
     "may_match(payload, spans, records, rules) -> the records some rule may match, by the needles in their bytes"},
    {"record_counts", wire_record_counts, METH_VARARGS,
     "record_counts(payload) -> per ResourceLogs its records, from the framing alone; or, if that is broken, what is wrong"},
    {"fields", wire_fields, METH_VARARGS,
     "fields(number, prefix, contents) -> bytes: prefix, then each of contents (a list of bytes) as field number"},
    {"record_text", wire_record_text, METH_VARARGS,
     "record_text(record, keys) -> (severity_number, severity_text, body) if the record's body is one string and no "
     "attribute has one of keys; else None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "processor._wire", .m_doc = NULL, .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__wire(void)
{
    PyObject *created = PyModule_Create(&module);
    if (created != NULL && (trace_table_add_type(created) < 0 || user_agents_add_to(created) < 0))
        Py_CLEAR(created);
    if (created != NULL && TooMany == NULL)
        TooMany = PyErr_NewException("processor._wire.TooMany", PyExc_ValueError, NULL);
    if (created != NULL && (TooMany == NULL || PyModule_AddObjectRef(created, "TooMany", TooMany) < 0))
        Py_CLEAR(created);
    return created;
}
