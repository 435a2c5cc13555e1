/* User agents: the needle automaton that classifies them, and the cache of their verdicts.
 *
 * A request's user agents are read from its serialized form (index() reports where each lies) and
 * looked up in UserAgentCache in one C pass: no bytes object is made for a user agent the cache
 * holds, or for a new one that is one ASCII string, which the automaton classifies in the same
 * call. A flood of unique user agents (every request's are new) must cost little more than the
 * usual few: a dict of bytes keys cost a copy, a siphash and two lookups per new one.
 *
 * The cache is bounded in entries and in the bytes of their keys, and a user agent longer than
 * MAX_KEY_BYTES is never kept: a flood of huge ones costs their classification, not memory. When
 * full, it starts over (no per-entry age to keep). With a doorkeeper (as TinyLFU admits), a new ASCII
 * user agent is kept only the second time it is seen: a flood of one-off user agents then neither
 * writes the cache nor starts it over every few requests, which in a real mix would also forget the
 * agents that do come again. Its hash is keyed by a random seed, because user
 * agents come from outside, and a probe never looks further than MAX_PROBE slots: keys made to
 * collide are at worst not kept. Values are verdicts, which never refer back to a cache, so the
 * garbage collector need not walk it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_user_agents.h"

/* --- the needle automaton --------------------------------------------------------------------------- */

/* Aho-Corasick, built in wire.py, checked and copied once by automaton(). A transition names its
 * target by where the target's row starts (state * width: no multiplication per byte) and its bit 31
 * says whether the target ends a needle, so a byte costs one table load and the rank table is read
 * only there. */
#define AUTOMATON "wire.automaton"
#define ENDS_NEEDLE 0x80000000u
#define LANES 4
#define NO_NEEDLE INT32_MAX

typedef struct {
    uint8_t cls[256];         /* byte -> class (ASCII case folded; 0: a byte no needle has) */
    Py_ssize_t width;         /* classes */
    uint32_t *next;           /* states * width transitions: the target's row, ENDS_NEEDLE where it ends one */
    int32_t *rank;            /* per state, the lowest rank among the needles ending there */
} automaton_t;

static void automaton_free(PyObject *capsule)
{
    automaton_t *a = PyCapsule_GetPointer(capsule, AUTOMATON);
    if (a != NULL) {
        PyMem_Free(a->next);
        PyMem_Free(a->rank);
        PyMem_Free(a);
    }
}

static PyObject *ua_automaton(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer classes, delta, ranks;
    Py_ssize_t width;
    if (!PyArg_ParseTuple(args, "y*y*y*n", &classes, &delta, &ranks, &width))
        return NULL;
    PyObject *result = NULL;
    automaton_t *a = NULL;
    Py_ssize_t states = ranks.len / (Py_ssize_t)sizeof(int32_t);
    if (classes.len != 256 || width < 1 || states < 1 || ranks.len % (Py_ssize_t)sizeof(int32_t) != 0 ||
        delta.len != states * width * (Py_ssize_t)sizeof(uint16_t)) {
        PyErr_SetString(PyExc_ValueError, "needle tables of the wrong sizes");
        goto done;
    }
    if (states * width >= (Py_ssize_t)ENDS_NEEDLE) {
        PyErr_SetString(PyExc_ValueError, "more automaton states than a transition can name");
        goto done;
    }
    const uint16_t *next = delta.buf;
    const int32_t *rank = ranks.buf;
    for (Py_ssize_t i = 0; i < 256; i++) {
        if (((const uint8_t *)classes.buf)[i] >= width) {
            PyErr_SetString(PyExc_ValueError, "a byte class past the table's width");
            goto done;
        }
    }
    a = PyMem_Calloc(1, sizeof(automaton_t));
    if (a == NULL || (a->next = PyMem_Malloc(states * width * sizeof(uint32_t))) == NULL ||
        (a->rank = PyMem_Malloc(ranks.len)) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(a->cls, classes.buf, 256);
    memcpy(a->rank, rank, ranks.len);
    a->width = width;
    for (Py_ssize_t i = 0; i < states * width; i++) {
        if (next[i] >= states) {
            PyErr_SetString(PyExc_ValueError, "a needle transition names no state");
            goto done;
        }
        a->next[i] = (uint32_t)(next[i] * width) | (rank[next[i]] != INT32_MAX ? ENDS_NEEDLE : 0);
    }
    result = PyCapsule_New(a, AUTOMATON, automaton_free);
    if (result != NULL)
        a = NULL; /* the capsule owns it */
done:
    if (a != NULL) {
        PyMem_Free(a->next);
        PyMem_Free(a->rank);
        PyMem_Free(a);
    }
    PyBuffer_Release(&classes);
    PyBuffer_Release(&delta);
    PyBuffer_Release(&ranks);
    return result;
}

typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
    uint32_t row;      /* the state to start in (0: the root), then the state it ended in */
    int32_t best;      /* the lowest rank found before p (NO_NEEDLE: none), then in the whole text */
} text_t;

typedef struct {
    const uint8_t *p;  /* the text's next byte */
    Py_ssize_t left;   /* bytes still to read */
    uint32_t row;      /* where its state's row starts in the table */
    int32_t best;
    Py_ssize_t text;   /* which text it is (-1: the lane is empty) */
} lane_t;

/* A lane's step ended a needle (``e``, the transition taken): the lane keeps the lowest rank. */
static inline void lane_found(lane_t *lane, uint32_t e, const automaton_t *a)
{
    if (e & ENDS_NEEDLE) {
        int32_t r = a->rank[(e & ~ENDS_NEEDLE) / a->width];
        if (r < lane->best)
            lane->best = r;
    }
}

/* Steps each of texts[] through the automaton from its row and best, and leaves in them the state
 * it ended in and the lowest rank among the needles found (NO_NEEDLE if none).
 *
 * A DFA step waits for the one before it (a load from a table too large for L1), so one text at a
 * time leaves the core mostly idle: LANES texts are stepped together, each lane taking the next
 * text when its own ends. */
static void needle_ranks(text_t *texts, Py_ssize_t count, const automaton_t *a)
{
    const uint8_t *cls = a->cls;
    const uint32_t *next = a->next;
    lane_t lane[LANES];
    Py_ssize_t taken = 0;
    for (int k = 0; k < LANES; k++)
        lane[k].text = -1;
    for (;;) {
        int active = 0;
        for (int k = 0; k < LANES; k++) {
            if (lane[k].text >= 0 && lane[k].left == 0) {
                texts[lane[k].text].row = lane[k].row;
                texts[lane[k].text].best = lane[k].best;
                lane[k].text = -1;
            }
            if (lane[k].text < 0 && taken < count) {
                lane[k].text = taken;
                lane[k].p = texts[taken].p;
                lane[k].left = texts[taken].n;
                lane[k].row = texts[taken].row;
                lane[k].best = texts[taken].best;
                taken++;
            }
            active += lane[k].text >= 0;
        }
        if (active == 0)
            break;
        if (active == LANES) {
            Py_ssize_t steps = lane[0].left;
            for (int k = 1; k < LANES; k++)
                steps = lane[k].left < steps ? lane[k].left : steps;
            /* Spelled out, lanes in registers: as a loop over arrays, each state went through the
             * stack on every byte. */
            _Static_assert(LANES == 4, "the lanes are spelled out here");
            uint32_t s0 = lane[0].row, s1 = lane[1].row, s2 = lane[2].row, s3 = lane[3].row;
            const uint8_t *t0 = lane[0].p, *t1 = lane[1].p, *t2 = lane[2].p, *t3 = lane[3].p;
            for (Py_ssize_t j = 0; j < steps; j++) {
                uint32_t e0 = next[s0 + cls[t0[j]]];
                uint32_t e1 = next[s1 + cls[t1[j]]];
                uint32_t e2 = next[s2 + cls[t2[j]]];
                uint32_t e3 = next[s3 + cls[t3[j]]];
                s0 = e0 & ~ENDS_NEEDLE;
                s1 = e1 & ~ENDS_NEEDLE;
                s2 = e2 & ~ENDS_NEEDLE;
                s3 = e3 & ~ENDS_NEEDLE;
                if ((e0 | e1 | e2 | e3) & ENDS_NEEDLE) {
                    lane_found(&lane[0], e0, a);
                    lane_found(&lane[1], e1, a);
                    lane_found(&lane[2], e2, a);
                    lane_found(&lane[3], e3, a);
                }
            }
            lane[0].row = s0;
            lane[1].row = s1;
            lane[2].row = s2;
            lane[3].row = s3;
            for (int k = 0; k < LANES; k++) {
                lane[k].p += steps;
                lane[k].left -= steps;
            }
            continue;
        }
        /* The last few texts: one at a time. */
        for (int k = 0; k < LANES; k++) {
            if (lane[k].text < 0)
                continue;
            uint32_t s = lane[k].row;
            for (Py_ssize_t j = 0; j < lane[k].left; j++) {
                uint32_t e = next[s + cls[lane[k].p[j]]];
                s = e & ~ENDS_NEEDLE;
                lane_found(&lane[k], e, a);
            }
            lane[k].row = s;
            lane[k].left = 0;
        }
    }
}

static inline int all_ascii(const uint8_t *p, Py_ssize_t n)
{
    uint64_t high = 0, word;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&word, p + i, 8);
        high |= word;
    }
    for (; i < n; i++)
        high |= p[i];
    return (high & 0x8080808080808080ULL) == 0;
}

/* Whether the serialized AnyValue p[0:n] is exactly one non-empty ASCII string_value; if so, *text is
 * that string. Only such a user agent is classified by the automaton (ASCII case folding is what
 * str.lower() does to ASCII text); any other goes to the caller's fallback. */
static int ascii_string(const uint8_t *p, Py_ssize_t n, text_t *text)
{
    if (n < 2 || p[0] != 0x0A)
        return 0;
    uint64_t length = 0;
    Py_ssize_t at = 1;
    for (int shift = 0; at < n && shift < 64; shift += 7) {
        uint8_t byte = p[at++];
        length |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            if (length == 0 || length != (uint64_t)(n - at) || !all_ascii(p + at, n - at))
                return 0;
            text->p = p + at;
            text->n = n - at;
            text->row = 0;
            text->best = NO_NEEDLE;
            return 1;
        }
    }
    return 0;
}

/* --- the cache ---------------------------------------------------------------------------------------- */

#define MIN_SLOTS 64          /* a power of two; the table doubles as it fills, to twice max_entries */
#define MAX_PROBE 64          /* slots a lookup or an insertion looks at, at most */
#define MAX_KEY_BYTES 1024    /* a longer key (user agent) is never kept */
#define KEY_BYTES_PER_ENTRY 256 /* the keys' storage holds at most this much per entry on average */
#define MIN_KEY_STORE 65536

typedef struct {
    uint64_t hash;
    uint32_t at, size;        /* the key in the store: its id's byte, then the serialized AnyValue */
    PyObject *verdict;        /* NULL: a free slot */
} ua_slot_t;

/* Where the automaton stood after a user agent's first bytes. New user agents mostly begin as others
 * do ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/"),
 * and a flood of unique ones differs in a few bytes near the end. The automaton's state (and the
 * best needle so far) after a prefix depends on nothing else, so it is kept for prefixes of 32, 64,
 * ... CHECKPOINT_MAX bytes: a new user agent resumes from the longest one kept and steps through
 * the rest only. A prefix is matched by its bytes, not only its hash: a state taken from another
 * prefix could give a real user's agent a monitor's verdict. */
#define CHECKPOINT_STEP 32    /* a multiple of 16: prefix_hashes reads 16 bytes at a time */
#define CHECKPOINT_MAX 256
#define CHECKPOINT_SLOTS 1024 /* a power of two; direct-mapped by the prefix's hash */

/* A new user agent probes a slot per level, most of them for a prefix never kept: the slots are
 * small (24 KiB in all, cache-resident), and a prefix's bytes, read only when its hash matches,
 * lie apart (prefixes[slot]). */
typedef struct {
    uint64_t hash;
    uint32_t row;             /* the automaton's state after the prefix */
    int32_t best;             /* the lowest rank among the needles in the prefix */
    uint16_t n;               /* the prefix's length; 0: an empty slot */
    uint8_t hits;             /* saturating: a checkpoint that was used outlives new ones for its slot */
} checkpoint_t;

/* The doorkeeper: a bit per hash (one probe), set the first time a new ASCII user agent is seen;
 * a false positive only keeps a user agent at its first sight. 64 KiB stay in L2; the bits start over
 * once SEEN_BITS / 16 are set (one in 16 at most: few false positives), every ~130 requests of a flood. */
#define SEEN_BITS ((uint64_t)1 << 19)

typedef struct {
    PyObject_HEAD
    ua_slot_t *slots;
    size_t mask;              /* slots - 1; at most half of them in use */
    uint32_t *used;           /* the slots in use, count of them: starting over visits only those */
    Py_ssize_t used_size;
    Py_ssize_t count, max_entries, cleared;
    uint8_t *store;           /* every key's bytes, one after another */
    Py_ssize_t store_used, store_size, store_max;
    uint64_t seed[2];
    PyObject *automaton;      /* the capsule, or None: then every new user agent goes to the fallback */
    const automaton_t *a;
    PyObject *tables;         /* list: per key id, its verdicts by needle rank, the no-needle one last */
    checkpoint_t *checkpoints; /* CHECKPOINT_SLOTS, made with the first new user agent */
    uint8_t (*prefixes)[CHECKPOINT_MAX]; /* each slot's prefix bytes */
    Py_ssize_t resumed;       /* new user agents stepped from a checkpoint, not from their start */
    uint64_t *seen;           /* the doorkeeper's SEEN_BITS, or NULL: every new user agent is kept */
    Py_ssize_t seen_count;    /* bits set in it */
    Py_ssize_t first_sightings; /* new user agents classified but not kept: seen for the first time */
} Cache;

static PyTypeObject CacheType;

static inline uint64_t mum(uint64_t a, uint64_t b)
{
    __uint128_t m = (__uint128_t)a * b;
    return (uint64_t)m ^ (uint64_t)(m >> 64);
}

/* Keyed by the seed, 16 bytes per multiplication, as wyhash mixes. */
static uint64_t key_hash(const Cache *c, int id, const uint8_t *p, Py_ssize_t n)
{
    uint64_t h = c->seed[0] ^ ((uint64_t)n << 8 | (uint64_t)id), a, b;
    Py_ssize_t i = 0;
    for (; i + 16 <= n; i += 16) {
        memcpy(&a, p + i, 8);
        memcpy(&b, p + i + 8, 8);
        h = mum(a ^ c->seed[1] ^ h, b ^ c->seed[0]);
    }
    a = b = 0;
    Py_ssize_t left = n - i;
    memcpy(&a, p + i, (size_t)(left < 8 ? left : 8));
    if (left > 8)
        memcpy(&b, p + i + 8, (size_t)(left - 8));
    return mum(a ^ c->seed[1] ^ h, b ^ c->seed[0] ^ 0x9E3779B97F4A7C15ULL);
}

/* The slot holding the key, or NULL; *free is the first free slot on its probe, if any. */
static ua_slot_t *find(const Cache *c, uint64_t h, int id, const uint8_t *p, Py_ssize_t n, ua_slot_t **free)
{
    *free = NULL;
    for (size_t probe = 0, i = h & c->mask; probe < MAX_PROBE && probe <= c->mask; probe++, i = (i + 1) & c->mask) {
        ua_slot_t *s = &c->slots[i];
        if (s->verdict == NULL) {
            *free = s;
            return NULL;
        }
        if (s->hash == h && s->size == (uint32_t)n + 1 && c->store[s->at] == id &&
            memcmp(c->store + s->at + 1, p, (size_t)n) == 0)
            return s;
    }
    return NULL;
}

/* Forgets every entry (the store and the slots stay allocated). A flood of new user agents fills
 * the cache every ~40 requests: walking and zeroing every slot (twice max_entries or more) cost
 * more than the entries themselves. */
static void clear_all(Cache *c)
{
    for (Py_ssize_t i = 0; i < c->count; i++) {
        ua_slot_t *s = &c->slots[c->used[i]];
        PyObject *verdict = s->verdict;
        memset(s, 0, sizeof *s);
        Py_DECREF(verdict);
    }
    c->count = 0;
    c->store_used = 0;
    c->cleared++;
}

/* Room in used[] for one more entry: 0, or -1 with MemoryError. */
static int room_for_one(Cache *c)
{
    if (c->count < c->used_size)
        return 0;
    Py_ssize_t size = c->used_size ? c->used_size * 2 : MIN_SLOTS;
    uint32_t *used = PyMem_Realloc(c->used, (size_t)size * sizeof *used);
    if (used == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    c->used = used;
    c->used_size = size;
    return 0;
}

static int grow(Cache *c)
{
    size_t old_size = c->mask + 1;
    ua_slot_t *old = c->slots, *slots = PyMem_Calloc(old_size * 2, sizeof *slots);
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    c->slots = slots;
    c->mask = old_size * 2 - 1;
    c->count = 0;
    for (size_t i = 0; i < old_size; i++) {
        if (old[i].verdict == NULL)
            continue;
        for (size_t probe = 0, j = old[i].hash & c->mask;; probe++, j = (j + 1) & c->mask) {
            if (probe == MAX_PROBE) { /* not placeable within reach: forgotten, as a cache may */
                Py_DECREF(old[i].verdict);
                break;
            }
            if (slots[j].verdict == NULL) {
                slots[j] = old[i];
                c->used[c->count++] = (uint32_t)j; /* no more than before: room kept */
                break;
            }
        }
    }
    PyMem_Free(old);
    return 0;
}

/* Keeps key -> verdict if it may be kept: 0, or -1 with MemoryError. A full cache starts over. */
static int keep(Cache *c, uint64_t h, int id, const uint8_t *p, Py_ssize_t n, PyObject *verdict)
{
    if (n + 1 > MAX_KEY_BYTES)
        return 0;
    ua_slot_t *free;
    if (find(c, h, id, p, n, &free) != NULL)
        return 0; /* already kept (a second occurrence in the request): no start-over for it */
    if (c->count >= c->max_entries || c->store_used + n + 1 > c->store_max) {
        clear_all(c);
        free = &c->slots[h & c->mask];
    }
    if ((size_t)c->count + 1 > (c->mask + 1) / 2) {
        if (grow(c) < 0)
            return -1;
        if (find(c, h, id, p, n, &free) != NULL) /* the slots moved */
            return 0;
    }
    if (free == NULL)
        return 0; /* no free slot within reach */
    if (room_for_one(c) < 0)
        return -1;
    if (c->store_used + n + 1 > c->store_size) {
        Py_ssize_t size = c->store_size ? c->store_size : MIN_KEY_STORE;
        while (size < c->store_used + n + 1)
            size *= 2;
        if (size > c->store_max)
            size = c->store_max;
        uint8_t *store = PyMem_Realloc(c->store, (size_t)size);
        if (store == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        c->store = store;
        c->store_size = size;
    }
    free->hash = h;
    free->at = (uint32_t)c->store_used;
    free->size = (uint32_t)n + 1;
    c->store[c->store_used] = (uint8_t)id;
    memcpy(c->store + c->store_used + 1, p, (size_t)n);
    c->store_used += n + 1;
    free->verdict = Py_NewRef(verdict);
    c->used[c->count++] = (uint32_t)(free - c->slots);
    return 0;
}

/* The doorkeeper's bit for hash h: from the high bits (the slot's index comes from the low ones). */
static inline uint64_t seen_bit(uint64_t h)
{
    return (h >> 32) & (SEEN_BITS - 1);
}

/* Whether the doorkeeper saw the user agent of hash h before (then it is kept); else it marks it seen. */
static int seen_before(Cache *c, uint64_t h)
{
    uint64_t bit = seen_bit(h);
    uint64_t *word = &c->seen[bit >> 6], mask = (uint64_t)1 << (bit & 63);
    if (*word & mask)
        return 1;
    *word |= mask;
    if (++c->seen_count >= (Py_ssize_t)(SEEN_BITS / 16)) {
        memset(c->seen, 0, SEEN_BITS / 8);
        c->seen_count = 0;
    }
    return 0;
}

/* The verdict (borrowed) for a user agent of key id ``id`` whose lowest needle rank is ``rank``. */
static PyObject *by_rank(const Cache *c, int id, int32_t rank)
{
    PyObject *table = id < PyList_GET_SIZE(c->tables) ? PyList_GET_ITEM(c->tables, id) : NULL;
    Py_ssize_t size = table != NULL && PyList_Check(table) ? PyList_GET_SIZE(table) : 0;
    Py_ssize_t last = size - 1; /* the no-needle verdict's place */
    if (last < 0 || (rank != NO_NEEDLE && rank >= last)) {
        PyErr_Format(PyExc_ValueError, "no verdict for key id %d, needle rank %ld", id, (long)rank);
        return NULL;
    }
    return PyList_GET_ITEM(table, rank == NO_NEEDLE ? last : rank);
}

/* Hashes of the prefixes of p of 1, 2, ... levels checkpoints (CHECKPOINT_STEP bytes each) into h[]. */
static void prefix_hashes(const Cache *c, const uint8_t *p, int levels, uint64_t *h)
{
    uint64_t x = c->seed[1], a, b;
    for (int l = 0; l < levels; l++) {
        for (int i = 0; i < CHECKPOINT_STEP; i += 16) {
            memcpy(&a, p + l * CHECKPOINT_STEP + i, 8);
            memcpy(&b, p + l * CHECKPOINT_STEP + i + 8, 8);
            x = mum(a ^ c->seed[0] ^ x, b ^ c->seed[1]);
        }
        h[l] = mum(x ^ (uint64_t)(l + 1), c->seed[0] ^ 0x9E3779B97F4A7C15ULL);
    }
}

static void keep_checkpoint(Cache *c, uint64_t h, const uint8_t *prefix, Py_ssize_t n, const text_t *state)
{
    size_t slot = h & (CHECKPOINT_SLOTS - 1);
    checkpoint_t *k = &c->checkpoints[slot];
    if (k->n != 0 && k->hits > 0) {
        k->hits--; /* a used checkpoint gives way only after as many new ones as it was used */
        return;
    }
    k->hash = h;
    k->row = state->row;
    k->best = state->best;
    k->n = (uint16_t)n;
    k->hits = 0;
    memcpy(c->prefixes[slot], prefix, (size_t)n);
}

/* needle_ranks over new user agents (each from the root), resuming each from the longest checkpoint
 * kept for its beginning; a text is stepped to one checkpoint past that first, which is kept, then
 * on to its end. So a beginning that comes again is kept a step deeper each time, up to where the
 * user agents that share it part. 0, or -1 with MemoryError. */
static int classify_texts(Cache *c, text_t *texts, Py_ssize_t count)
{
    if (c->checkpoints == NULL) {
        c->checkpoints = PyMem_Calloc(CHECKPOINT_SLOTS, sizeof *c->checkpoints);
        c->prefixes = PyMem_Malloc(CHECKPOINT_SLOTS * sizeof *c->prefixes);
        if (c->checkpoints == NULL || c->prefixes == NULL) {
            PyMem_Free(c->checkpoints);
            PyMem_Free(c->prefixes);
            c->checkpoints = NULL;
            c->prefixes = NULL;
            PyErr_NoMemory();
            return -1;
        }
    }
    Py_ssize_t *deeper = PyMem_Malloc((size_t)count * sizeof *deeper); /* texts that keep a checkpoint */
    Py_ssize_t *start = PyMem_Malloc((size_t)count * sizeof *start);   /* where their first run starts */
    uint64_t *hash = PyMem_Malloc((size_t)count * sizeof *hash);       /* the hash of the prefix kept */
    text_t *rest = PyMem_Malloc((size_t)count * sizeof *rest);         /* their second runs */
    if (deeper == NULL || start == NULL || hash == NULL || rest == NULL) {
        PyMem_Free(deeper);
        PyMem_Free(start);
        PyMem_Free(hash);
        PyMem_Free(rest);
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t keeping = 0;
    for (Py_ssize_t t = 0; t < count; t++) {
        text_t *x = &texts[t];
        int levels = (int)((x->n < CHECKPOINT_MAX ? x->n : CHECKPOINT_MAX) / CHECKPOINT_STEP), from = 0;
        if (levels == 0)
            continue;
        uint64_t h[CHECKPOINT_MAX / CHECKPOINT_STEP];
        prefix_hashes(c, x->p, levels, h);
        for (int l = levels; l > 0; l--) {
            size_t slot = h[l - 1] & (CHECKPOINT_SLOTS - 1);
            checkpoint_t *k = &c->checkpoints[slot];
            if (k->n == l * CHECKPOINT_STEP && k->hash == h[l - 1] && memcmp(c->prefixes[slot], x->p, (size_t)k->n) == 0) {
                x->row = k->row;
                x->best = k->best;
                if (k->hits < UINT8_MAX)
                    k->hits++;
                c->resumed++;
                from = l;
                break;
            }
        }
        Py_ssize_t skip = (Py_ssize_t)from * CHECKPOINT_STEP;
        x->p += skip;
        x->n -= skip;
        if (from < levels) { /* the first run ends at the next checkpoint */
            deeper[keeping] = t;
            start[keeping] = skip;
            hash[keeping] = h[from];
            rest[keeping].p = x->p + CHECKPOINT_STEP;
            rest[keeping].n = x->n - CHECKPOINT_STEP;
            keeping++;
            x->n = CHECKPOINT_STEP;
        }
    }
    needle_ranks(texts, count, c->a);
    for (Py_ssize_t j = 0; j < keeping; j++) {
        const text_t *x = &texts[deeper[j]];
        keep_checkpoint(c, hash[j], x->p - start[j], start[j] + CHECKPOINT_STEP, x);
        rest[j].row = x->row;
        rest[j].best = x->best;
    }
    needle_ranks(rest, keeping, c->a);
    for (Py_ssize_t j = 0; j < keeping; j++)
        texts[deeper[j]].best = rest[j].best;
    PyMem_Free(deeper);
    PyMem_Free(start);
    PyMem_Free(hash);
    PyMem_Free(rest);
    return 0;
}

static PyObject *cache_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"max_entries", "seed", "automaton", "tables", "doorkeeper", NULL};
    Py_ssize_t max_entries, seed_size;
    const char *seed;
    PyObject *automaton, *tables;
    int doorkeeper = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ny#OO!|$p", names, &max_entries, &seed, &seed_size, &automaton,
                                     &PyList_Type, &tables, &doorkeeper))
        return NULL;
    if (max_entries < 1 || max_entries > (Py_ssize_t)1 << 24 || seed_size != sizeof(uint64_t[2])) {
        PyErr_SetString(PyExc_ValueError, "UserAgentCache needs 1 <= max_entries <= 2**24 and a 16-byte seed");
        return NULL;
    }
    const automaton_t *a = NULL;
    if (automaton != Py_None && (a = PyCapsule_GetPointer(automaton, AUTOMATON)) == NULL)
        return NULL;
    Cache *c = (Cache *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->slots = PyMem_Calloc(MIN_SLOTS, sizeof *c->slots);
    if (doorkeeper)
        c->seen = PyMem_Calloc(SEEN_BITS / 64, sizeof *c->seen);
    if (c->slots == NULL || (doorkeeper && c->seen == NULL)) {
        Py_DECREF(c);
        return PyErr_NoMemory();
    }
    c->mask = MIN_SLOTS - 1;
    c->max_entries = max_entries;
    c->store_max = max_entries * KEY_BYTES_PER_ENTRY;
    if (c->store_max < MIN_KEY_STORE)
        c->store_max = MIN_KEY_STORE;
    memcpy(c->seed, seed, sizeof c->seed);
    c->automaton = Py_NewRef(automaton);
    c->a = a;
    c->tables = Py_NewRef(tables);
    return (PyObject *)c;
}

static void cache_dealloc(Cache *c)
{
    if (c->slots != NULL)
        for (size_t i = 0; i <= c->mask; i++)
            Py_XDECREF(c->slots[i].verdict);
    PyMem_Free(c->slots);
    PyMem_Free(c->used);
    PyMem_Free(c->store);
    PyMem_Free(c->checkpoints);
    PyMem_Free(c->prefixes);
    PyMem_Free(c->seen);
    Py_XDECREF(c->automaton);
    Py_XDECREF(c->tables);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static Py_ssize_t cache_length(Cache *c)
{
    return c->count;
}

/* Whether verdict a ranks before verdict b (their ``rank``, lower is better): 1, 0, or -1 with an
 * exception. For a record with two user agents. */
static int ranks_before(PyObject *a, PyObject *b)
{
    PyObject *ra = PyObject_GetAttrString(a, "rank"), *rb = ra == NULL ? NULL : PyObject_GetAttrString(b, "rank");
    int before = rb == NULL ? -1 : PyObject_RichCompareBool(ra, rb, Py_LT);
    Py_XDECREF(ra);
    Py_XDECREF(rb);
    return before;
}

typedef struct {
    uint32_t record, id, start, end; /* what index() reports per user-agent attribute */
} ua_entry_t;

static PyObject *cache_verdicts(Cache *c, PyObject *args)
{
    Py_buffer payload, entries;
    PyObject *fallback;
    if (!PyArg_ParseTuple(args, "y*y*O", &payload, &entries, &fallback))
        return NULL;
    PyObject *own = NULL;
    ua_entry_t *e = NULL;
    PyObject **verdict = NULL;
    uint64_t *hash = NULL;
    Py_ssize_t *miss = NULL, *texts_of = NULL;
    text_t *texts = NULL;
    Py_ssize_t n = entries.len / (Py_ssize_t)sizeof(ua_entry_t), misses = 0, count = 0;
    const uint8_t *buf = payload.buf;
    if (entries.len % (Py_ssize_t)sizeof(ua_entry_t) != 0) {
        PyErr_SetString(PyExc_ValueError, "user agents: 4 uint32 (record, key id, start, end) each");
        goto done;
    }
    size_t slots = n > 0 ? (size_t)n : 1;
    e = PyMem_Malloc(slots * sizeof *e);
    verdict = PyMem_Calloc(slots, sizeof *verdict);
    hash = PyMem_Malloc(slots * sizeof *hash);
    miss = PyMem_Malloc(slots * sizeof *miss);
    if (e == NULL || verdict == NULL || hash == NULL || miss == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(e, entries.buf, (size_t)entries.len); /* any alignment in, aligned here */
    for (Py_ssize_t i = 0; i < n; i++) {
        if (e[i].id > 255 || e[i].start > e[i].end || e[i].end > payload.len) {
            PyErr_SetString(PyExc_ValueError, "a user agent outside the payload, or a key id past 255");
            goto done;
        }
        hash[i] = key_hash(c, (int)e[i].id, buf + e[i].start, e[i].end - e[i].start);
        __builtin_prefetch(&c->slots[hash[i] & c->mask]);
    }
    /* 1. The user agents the cache holds. */
    for (Py_ssize_t i = 0; i < n; i++) {
        ua_slot_t *free, *s = find(c, hash[i], (int)e[i].id, buf + e[i].start, e[i].end - e[i].start, &free);
        if (s != NULL)
            verdict[i] = Py_NewRef(s->verdict);
        else
            miss[misses++] = i;
    }
    /* 2. The new ones: the plain ASCII strings through the automaton together (each occurrence), the
     *    rest through the fallback, once per request: each is kept as it is decided, so a second
     *    occurrence finds the first. With the doorkeeper, an ASCII one is kept at its second sight. */
    if (misses > 0) {
        texts = PyMem_Malloc((size_t)misses * sizeof *texts);
        texts_of = PyMem_Malloc((size_t)misses * sizeof *texts_of);
        if (texts == NULL || texts_of == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t m = 0; m < misses; m++) {
            ua_entry_t *x = &e[miss[m]];
            texts_of[m] = -1;
            if (c->a != NULL && ascii_string(buf + x->start, x->end - x->start, &texts[count]))
                texts_of[m] = count++;
        }
        /* The doorkeeper's words are fetched while the automaton runs: between requests the rest of
         * the work (the trace table, the payload) pushes its 64 KiB out of cache, and its load was
         * two fifths of this function's time in a flood of new user agents. */
        if (c->seen != NULL)
            for (Py_ssize_t m = 0; m < misses; m++)
                __builtin_prefetch(&c->seen[seen_bit(hash[miss[m]]) >> 6], 1);
        if (count > 0 && classify_texts(c, texts, count) < 0)
            goto done;
        for (Py_ssize_t m = 0; m < misses; m++) {
            Py_ssize_t i = miss[m];
            const uint8_t *p = buf + e[i].start;
            Py_ssize_t size = e[i].end - e[i].start;
            int id = (int)e[i].id;
            if (texts_of[m] >= 0) {
                PyObject *found = by_rank(c, id, texts[texts_of[m]].best);
                if (found == NULL)
                    goto done;
                verdict[i] = Py_NewRef(found);
                if (c->seen != NULL && !seen_before(c, hash[i])) {
                    c->first_sightings++;
                    continue;
                }
            } else {
                ua_slot_t *free, *s = find(c, hash[i], id, p, size, &free);
                if (s != NULL) {
                    verdict[i] = Py_NewRef(s->verdict);
                    continue;
                }
                PyObject *key = PyBytes_FromStringAndSize(NULL, size + 1);
                if (key == NULL)
                    goto done;
                PyBytes_AS_STRING(key)[0] = (char)id;
                memcpy(PyBytes_AS_STRING(key) + 1, p, (size_t)size);
                verdict[i] = PyObject_CallOneArg(fallback, key);
                Py_DECREF(key);
                if (verdict[i] == NULL)
                    goto done;
            }
            if (keep(c, hash[i], id, p, size, verdict[i]) < 0)
                goto done;
        }
    }
    /* 3. Per record, the verdict its user agents give (those that give one): a record's user agents
     *    are next to each other; of two, the better ranked, the first on a tie. */
    own = PyDict_New();
    Py_ssize_t last = -1; /* the entry whose verdict the last record set */
    for (Py_ssize_t i = 0; own != NULL && i < n; i++) {
        if (verdict[i] == Py_None)
            continue;
        if (last >= 0 && e[last].record == e[i].record) {
            int better = ranks_before(verdict[i], verdict[last]);
            if (better < 0) {
                Py_CLEAR(own);
                break;
            }
            if (!better)
                continue;
        }
        PyObject *record = PyLong_FromUnsignedLong(e[i].record);
        if (record == NULL || PyDict_SetItem(own, record, verdict[i]) < 0)
            Py_CLEAR(own);
        Py_XDECREF(record);
        last = i;
    }
done:
    if (verdict != NULL)
        for (Py_ssize_t i = 0; i < n; i++)
            Py_XDECREF(verdict[i]);
    PyMem_Free(e);
    PyMem_Free(verdict);
    PyMem_Free(hash);
    PyMem_Free(miss);
    PyMem_Free(texts);
    PyMem_Free(texts_of);
    PyBuffer_Release(&payload);
    PyBuffer_Release(&entries);
    return own;
}

static PyObject *cache_get(Cache *c, PyObject *args)
{
    Py_buffer key;
    PyObject *fallback = Py_None;
    if (!PyArg_ParseTuple(args, "y*|O", &key, &fallback))
        return NULL;
    PyObject *result = fallback;
    if (key.len >= 1) {
        const uint8_t *p = key.buf;
        ua_slot_t *free, *s = find(c, key_hash(c, p[0], p + 1, key.len - 1), p[0], p + 1, key.len - 1, &free);
        if (s != NULL)
            result = s->verdict;
    }
    PyBuffer_Release(&key);
    return Py_NewRef(result);
}

static PyObject *cache_clear(Cache *c, PyObject *Py_UNUSED(arg))
{
    clear_all(c);
    Py_RETURN_NONE;
}

static PyMethodDef cache_methods[] = {
    {"verdicts", (PyCFunction)cache_verdicts, METH_VARARGS,
     "verdicts(payload, user_agents, fallback) -> {record: verdict} for the records whose user agents give one. "
     "user_agents: per user-agent attribute, uint32 record, key id, start, end of its AnyValue in payload (what "
     "index() reports). New ones are classified and kept (with the doorkeeper, a plain ASCII string at its "
     "second sight): plain ASCII strings by the automaton, others by fallback(key), key = the id's byte + the "
     "AnyValue bytes. Of two for one record, the lower rank; the first on a tie"},
    {"get", (PyCFunction)cache_get, METH_VARARGS, "get(key, default=None) -> the verdict kept for key (id byte + AnyValue)"},
    {"clear", (PyCFunction)cache_clear, METH_NOARGS, "clear(): forget every entry"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef cache_members[] = {
    {"max_entries", T_PYSSIZET, offsetof(Cache, max_entries), READONLY, "entries kept at most"},
    {"cleared", T_PYSSIZET, offsetof(Cache, cleared), READONLY, "times the cache started over"},
    {"resumed", T_PYSSIZET, offsetof(Cache, resumed), READONLY,
     "new user agents the automaton resumed from a checkpoint kept for their beginning"},
    {"first_sightings", T_PYSSIZET, offsetof(Cache, first_sightings), READONLY,
     "new user agents the doorkeeper did not let in: classified, not kept, as seen for the first time"},
    {"key_bytes", T_PYSSIZET, offsetof(Cache, store_used), READONLY,
     "bytes of the keys kept (at most 256 per max_entries, and 64 KiB at least)"},
    {NULL, 0, 0, 0, NULL},
};

static PySequenceMethods cache_sequence = {.sq_length = (lenfunc)cache_length};

static PyTypeObject CacheType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "processor._wire.UserAgentCache",
    .tp_basicsize = sizeof(Cache),
    .tp_dealloc = (destructor)cache_dealloc,
    .tp_as_sequence = &cache_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "UserAgentCache(max_entries, seed, automaton, tables, *, doorkeeper=False): user agents' verdicts, "
              "bounded; see verdicts(). With the doorkeeper, a new ASCII user agent is kept the second time it is seen",
    .tp_methods = cache_methods,
    .tp_members = cache_members,
    .tp_new = cache_new,
};

static PyMethodDef functions[] = {
    {"automaton", ua_automaton, METH_VARARGS,
     "automaton(classes, delta, ranks, width) -> the needle automaton's tables, checked, for UserAgentCache"},
    {NULL, NULL, 0, NULL},
};

int user_agents_add_to(PyObject *module)
{
    if (PyType_Ready(&CacheType) < 0 || PyModule_AddFunctions(module, functions) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "UserAgentCache", (PyObject *)&CacheType);
}
