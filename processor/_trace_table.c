/* The trace memory's table: trace id -> verdict, and the order traces were learned in.
 *
 * A dict did this at a fifth of the pipeline's time. It holds a hundred thousand traces and each
 * request adds a few hundred and evicts as many: deleted entries fill the dict's entry array until
 * it is rebuilt (about every 75,000 inserts, touching every cold key), and each lookup reads the index,
 * the entry and the key object, three cache misses. Here a slot holds its key inline (a trace id
 * is 16 bytes), probing is linear and a deletion shifts the following slots back instead of
 * leaving a tombstone: about one miss per lookup, insert or delete, and no rebuilds but to grow.
 *
 * The order is a ring of learnings (trace id, when it expires), oldest first. A slot keeps the
 * expiry of its latest learning; an older learning of the same trace no longer matches it and is
 * dropped without effect when it expires or is evicted, so a trace lives until its latest learning
 * goes. Learning a trace again at the same instant adds no learning, and superseded learnings are
 * dropped early when they fill the ring: it holds at most about twice as many learnings as traces.
 *
 * Only 16-byte trace ids are kept (OTLP's length; the Collector refuses any other). A record with
 * another trace id inherits nothing: the side that never downgrades. Values are verdicts, which
 * never refer back to a table, so the garbage collector need not walk its slots.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_trace_table.h"

#define TRACE_ID_SIZE 16
#define MIN_SIZE 64 /* slots and learnings to start with (powers of two): a table per request is cheap */
#define PREFETCH_AHEAD 8 /* a pass over many traces asks for the slot this many traces ahead, so
                          * that their cache misses overlap instead of following one another */
#define LINE 64 /* bytes: slots are aligned to cache lines, so a 32-byte slot never spans two */

typedef struct {
    uint64_t hi, lo;
} trace_key;

typedef struct {
    trace_key key;
    PyObject *value; /* NULL: a free slot */
    double until;    /* its latest learning's */
} slot_t;

typedef struct {
    trace_key key;
    double until;
} learning_t;

typedef struct {
    PyObject_HEAD
    slot_t *slots;
    size_t mask; /* slots - 1; never more than half of them in use */
    Py_ssize_t count;
    learning_t *order; /* a ring, oldest first */
    size_t order_mask, order_first, order_count;
    uint64_t seed[2];
    Py_ssize_t max_traces;
    Py_ssize_t evicted;
    /* For among(), which is asked about a request's few hundred new traces and in the flood finds
     * none: a Bloom filter of the keys, 8 bits per slot (16 or more per key) in two probes, so that a
     * trace it does not hold costs no read of the slots. Made by the first among() (a table it is
     * never asked has none), kept up as keys come, dropped when the table grows or when as many keys
     * left as it holds (they stay in the filter), and made again by the next among(). */
    uint64_t *filter;
    size_t filter_mask;     /* bits - 1 */
    size_t filter_removed;  /* keys that left since it was made */
} Table;

static PyTypeObject TableType;

static int read_key(PyObject *trace_id, trace_key *key)
{
    if (!PyBytes_Check(trace_id) || PyBytes_GET_SIZE(trace_id) != TRACE_ID_SIZE)
        return 0;
    memcpy(key, PyBytes_AS_STRING(trace_id), TRACE_ID_SIZE);
    return 1;
}

/* Keyed by a random seed: trace ids come from outside, and ids chosen to collide would make long
 * probe runs. One 64x64->128-bit multiplication, folded, as wyhash mixes. */
static inline uint64_t mix(const Table *t, trace_key key)
{
    __uint128_t m = (__uint128_t)(key.hi ^ t->seed[0]) * (key.lo ^ t->seed[1]);
    return (uint64_t)m ^ (uint64_t)(m >> 64);
}

static inline size_t home(const Table *t, trace_key key)
{
    return (size_t)mix(t, key) & t->mask;
}

/* The filter's two bits for a key's mix: one from each half. */
static inline void filter_add(Table *t, uint64_t m)
{
    size_t a = (size_t)(m >> 32) & t->filter_mask, b = (size_t)(uint32_t)m & t->filter_mask;
    t->filter[a >> 6] |= 1ULL << (a & 63);
    t->filter[b >> 6] |= 1ULL << (b & 63);
}

static inline int filter_may_hold(const Table *t, uint64_t m)
{
    size_t a = (size_t)(m >> 32) & t->filter_mask, b = (size_t)(uint32_t)m & t->filter_mask;
    return (t->filter[a >> 6] >> (a & 63)) & (t->filter[b >> 6] >> (b & 63)) & 1;
}

static void drop_filter(Table *t)
{
    PyMem_Free(t->filter);
    t->filter = NULL;
}

/* Inlined always: GCC finds a function that only prefetches pure and drops the calls to it. */
static inline __attribute__((always_inline)) void prefetch_home(const Table *t, trace_key key)
{
    __builtin_prefetch(&t->slots[home(t, key)]);
}

static inline __attribute__((always_inline)) void prefetch_trace(const Table *t, PyObject *trace_id)
{
    trace_key key;
    if (read_key(trace_id, &key))
        prefetch_home(t, key);
}

/* size slots, all free, on cache-line boundaries; NULL with MemoryError. Freed with free(). */
static slot_t *new_slots(size_t size)
{
    slot_t *slots = aligned_alloc(LINE, size * sizeof *slots);
    if (slots == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memset(slots, 0, size * sizeof *slots);
    return slots;
}

/* The slot holding key, or the free slot where it would go. */
static slot_t *find(const Table *t, trace_key key)
{
    for (size_t i = home(t, key);; i = (i + 1) & t->mask) {
        slot_t *s = &t->slots[i];
        if (s->value == NULL || (s->key.hi == key.hi && s->key.lo == key.lo))
            return s;
    }
}

static int grow(Table *t)
{
    size_t old_size = t->mask + 1;
    slot_t *old = t->slots, *slots = new_slots(old_size * 2);
    if (slots == NULL)
        return -1;
    t->slots = slots;
    t->mask = old_size * 2 - 1;
    drop_filter(t); /* sized by the slots */
    for (size_t i = 0; i < old_size; i++)
        if (old[i].value != NULL)
            *find(t, old[i].key) = old[i];
    free(old);
    return 0;
}

/* Frees slot s; the slots after it in its run move back into the hole if their home allows. */
static void remove_slot(Table *t, slot_t *s)
{
    PyObject *value = s->value;
    size_t hole = (size_t)(s - t->slots);
    for (size_t j = (hole + 1) & t->mask; t->slots[j].value != NULL; j = (j + 1) & t->mask) {
        /* slot j may move back unless its home lies (cyclically) in (hole, j] */
        size_t from_home = (j - home(t, t->slots[j].key)) & t->mask;
        if (from_home >= ((j - hole) & t->mask)) {
            t->slots[hole] = t->slots[j];
            hole = j;
        }
    }
    t->slots[hole].value = NULL;
    t->count--;
    if (t->filter != NULL && ++t->filter_removed > (size_t)t->count + MIN_SIZE)
        drop_filter(t); /* more keys gone than held: made again, without them, when next needed */
    Py_DECREF(value); /* last: the table is whole again if this runs any code */
}

/* Keeps, in order, only the learnings that still decide when their trace goes (their slot's expiry):
 * the others would be dropped without effect when their turn came. */
static void compact_order(Table *t)
{
    size_t kept = 0;
    for (size_t n = 0; n < t->order_count; n++) {
        learning_t learning = t->order[(t->order_first + n) & t->order_mask];
        const slot_t *s = find(t, learning.key);
        if (s->value != NULL && s->until == learning.until)
            t->order[(t->order_first + kept++) & t->order_mask] = learning;
    }
    t->order_count = kept;
}

static int push_learning(Table *t, trace_key key, double until)
{
    /* Full, and mostly of learnings later ones superseded (traces learned again and again): those
     * go, rather than the ring growing with every renewal for a whole TTL. */
    if (t->order_count == t->order_mask + 1 && t->order_count > 2 * (size_t)t->count)
        compact_order(t);
    if (t->order_count == t->order_mask + 1) { /* full: twice as large, oldest first at 0 */
        size_t size = t->order_count * 2;
        learning_t *order = PyMem_Malloc(size * sizeof *order);
        if (order == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t n = 0; n < t->order_count; n++)
            order[n] = t->order[(t->order_first + n) & t->order_mask];
        PyMem_Free(t->order);
        t->order = order;
        t->order_mask = size - 1;
        t->order_first = 0;
    }
    learning_t *learning = &t->order[(t->order_first + t->order_count++) & t->order_mask];
    learning->key = key;
    learning->until = until;
    return 0;
}

/* Drops the oldest learning; returns 1 if that forgot its trace (no later learning renewed it). */
static int drop_oldest(Table *t)
{
    learning_t learning = t->order[t->order_first];
    if (t->order_count > PREFETCH_AHEAD)
        prefetch_home(t, t->order[(t->order_first + PREFETCH_AHEAD) & t->order_mask].key);
    t->order_first = (t->order_first + 1) & t->order_mask;
    t->order_count--;
    slot_t *s = find(t, learning.key);
    if (s->value == NULL || s->until != learning.until)
        return 0;
    remove_slot(t, s);
    return 1;
}

/* Puts key -> value (a new reference is taken), learned until ``until``, in s: find(t, key).
 * -1 with an exception. */
static int put(Table *t, slot_t *s, trace_key key, PyObject *value, double until)
{
    if (s->value == NULL) {
        if ((size_t)(t->count + 1) * 2 > t->mask + 1) {
            if (grow(t) < 0)
                return -1;
            s = find(t, key);
        }
        if (push_learning(t, key, until) < 0)
            return -1;
        s->key = key;
        s->value = Py_NewRef(value);
        s->until = until;
        t->count++;
        if (t->filter != NULL)
            filter_add(t, mix(t, key));
        return 0;
    }
    if (s->until != until) {
        if (push_learning(t, key, until) < 0)
            return -1;
        s->until = until;
    }
    PyObject *old = s->value;
    s->value = Py_NewRef(value);
    Py_DECREF(old);
    return 0;
}

static PyObject *table_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"max_traces", "seed", NULL};
    Py_ssize_t max_traces, seed_size;
    const char *seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ny#", names, &max_traces, &seed, &seed_size))
        return NULL;
    if (max_traces < 1 || seed_size != sizeof(uint64_t[2])) {
        PyErr_SetString(PyExc_ValueError, "TraceTable needs max_traces >= 1 and a 16-byte seed");
        return NULL;
    }
    Table *t = (Table *)type->tp_alloc(type, 0);
    if (t == NULL)
        return NULL;
    t->slots = new_slots(MIN_SIZE);
    t->order = PyMem_Malloc(MIN_SIZE * sizeof *t->order);
    if (t->slots == NULL || t->order == NULL) {
        if (t->slots != NULL)
            PyErr_NoMemory(); /* new_slots() raised its own */
        Py_DECREF(t);
        return NULL;
    }
    t->mask = t->order_mask = MIN_SIZE - 1;
    memcpy(t->seed, seed, sizeof t->seed);
    t->max_traces = max_traces;
    return (PyObject *)t;
}

static void table_dealloc(Table *t)
{
    if (t->slots != NULL)
        for (size_t i = 0; i <= t->mask; i++)
            Py_XDECREF(t->slots[i].value);
    free(t->slots);
    PyMem_Free(t->order);
    PyMem_Free(t->filter);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static Py_ssize_t table_length(Table *t)
{
    return t->count;
}

PyObject *trace_table_get(PyObject *table, PyObject *trace_id)
{
    trace_key key;
    if (!read_key(trace_id, &key))
        return NULL;
    return find((Table *)table, key)->value;
}

void trace_table_prefetch(PyObject *table, PyObject *trace_id)
{
    prefetch_trace((Table *)table, trace_id);
}

int trace_table_check(PyObject *obj)
{
    return PyObject_TypeCheck(obj, &TableType);
}

/* get() and pop() are called per held record and per trace merged: METH_FASTCALL, without an
 * argument tuple to build and parse. */
static int key_and_default(const char *name, PyObject *const *args, Py_ssize_t n, PyObject **fallback)
{
    if (n < 1 || n > 2) {
        PyErr_Format(PyExc_TypeError, "%s(trace_id, default=None) takes 1 or 2 arguments, not %zd", name, n);
        return -1;
    }
    *fallback = n == 2 ? args[1] : Py_None;
    return 0;
}

static PyObject *table_get(Table *t, PyObject *const *args, Py_ssize_t n)
{
    PyObject *fallback;
    if (key_and_default("get", args, n, &fallback) < 0)
        return NULL;
    PyObject *value = trace_table_get((PyObject *)t, args[0]);
    return Py_NewRef(value != NULL ? value : fallback);
}

static PyObject *table_set(Table *t, PyObject *const *args, Py_ssize_t n)
{
    trace_key key;
    if (n != 3) {
        PyErr_Format(PyExc_TypeError, "set(trace_id, value, until) takes 3 arguments, not %zd", n);
        return NULL;
    }
    double until = PyFloat_AsDouble(args[2]);
    if (until == -1.0 && PyErr_Occurred())
        return NULL;
    if (read_key(args[0], &key) && put(t, find(t, key), key, args[1], until) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *table_learn_new(Table *t, PyObject *args)
{
    PyObject *trace_ids, *values;
    double until;
    if (!PyArg_ParseTuple(args, "O!O!d", &PyList_Type, &trace_ids, &PyList_Type, &values, &until))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(trace_ids);
    if (PyList_GET_SIZE(values) != n) {
        PyErr_SetString(PyExc_ValueError, "trace_ids and values must have the same length");
        return NULL;
    }
    PyObject *known = PyList_New(0);
    for (Py_ssize_t i = 0; i < n && i < PREFETCH_AHEAD; i++)
        prefetch_trace(t, PyList_GET_ITEM(trace_ids, i));
    for (Py_ssize_t i = 0; known != NULL && i < n; i++) {
        trace_key key;
        if (i + PREFETCH_AHEAD < n)
            prefetch_trace(t, PyList_GET_ITEM(trace_ids, i + PREFETCH_AHEAD));
        if (!read_key(PyList_GET_ITEM(trace_ids, i), &key))
            continue;
        slot_t *s = find(t, key);
        if (s->value != NULL) {
            PyObject *position = PyLong_FromSsize_t(i);
            if (position == NULL || PyList_Append(known, position) < 0)
                Py_CLEAR(known);
            Py_XDECREF(position);
        } else if (put(t, s, key, PyList_GET_ITEM(values, i), until) < 0) {
            Py_CLEAR(known);
        }
    }
    return known;
}

static PyObject *table_pop(Table *t, PyObject *const *args, Py_ssize_t n)
{
    PyObject *fallback;
    trace_key key;
    if (key_and_default("pop", args, n, &fallback) < 0)
        return NULL;
    if (!read_key(args[0], &key))
        return Py_NewRef(fallback);
    slot_t *s = find(t, key);
    if (s->value == NULL)
        return Py_NewRef(fallback);
    PyObject *value = Py_NewRef(s->value);
    remove_slot(t, s); /* its learnings no longer match a slot: dropped without effect */
    return value;
}

/* The filter over the keys the table holds now, for a table without one: 0, or -1 with MemoryError. */
static int make_filter(Table *t)
{
    size_t bits = (t->mask + 1) * 8;
    if ((t->filter = PyMem_Calloc(bits / 64, sizeof *t->filter)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->filter_mask = bits - 1;
    t->filter_removed = 0;
    for (size_t i = 0; i <= t->mask; i++)
        if (t->slots[i].value != NULL)
            filter_add(t, mix(t, t->slots[i].key));
    return 0;
}

/* Positions, in order, of the trace ids the table holds: the filter first, and a probe of the slots
 * only for those it may hold. */
static PyObject *table_among(Table *t, PyObject *trace_ids)
{
    if (!PyList_Check(trace_ids)) {
        PyErr_SetString(PyExc_TypeError, "among() takes a list of trace ids");
        return NULL;
    }
    if (t->filter == NULL && make_filter(t) < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(trace_ids);
    PyObject *found = PyList_New(0);
    for (Py_ssize_t i = 0; found != NULL && i < n; i++) {
        trace_key key;
        if (!read_key(PyList_GET_ITEM(trace_ids, i), &key))
            continue;
        uint64_t m = mix(t, key);
        if (!filter_may_hold(t, m))
            continue;
        const slot_t *s = find(t, key);
        if (s->value == NULL)
            continue;
        PyObject *position = PyLong_FromSsize_t(i);
        if (position == NULL || PyList_Append(found, position) < 0)
            Py_CLEAR(found);
        Py_XDECREF(position);
    }
    return found;
}

static PyObject *table_expire(Table *t, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    Py_ssize_t forgotten = 0;
    while (t->order_count && t->order[t->order_first].until <= now)
        forgotten += drop_oldest(t);
    return PyLong_FromSsize_t(forgotten);
}

static PyObject *table_evict(Table *t, PyObject *Py_UNUSED(arg))
{
    Py_ssize_t evicted = 0;
    while (t->count > t->max_traces && t->order_count)
        evicted += drop_oldest(t);
    t->evicted += evicted;
    return PyLong_FromSsize_t(evicted);
}

static PyObject *table_items(Table *t, PyObject *Py_UNUSED(arg))
{
    PyObject *items = PyList_New(0);
    for (size_t i = 0; items != NULL && i <= t->mask; i++) {
        slot_t *s = &t->slots[i];
        if (s->value == NULL)
            continue;
        PyObject *item = Py_BuildValue("(y#O)", (const char *)&s->key, (Py_ssize_t)TRACE_ID_SIZE, s->value);
        if (item == NULL || PyList_Append(items, item) < 0)
            Py_CLEAR(items);
        Py_XDECREF(item);
    }
    return items;
}

static PyMethodDef table_methods[] = {
    {"get", (PyCFunction)(void (*)(void))table_get, METH_FASTCALL, "get(trace_id, default=None) -> its value, or default"},
    {"set", (PyCFunction)(void (*)(void))table_set, METH_FASTCALL,
     "set(trace_id, value, until): trace_id -> value, learned until `until` (any trace id not 16 bytes is ignored)"},
    {"learn_new", (PyCFunction)table_learn_new, METH_VARARGS,
     "learn_new(trace_ids, values, until) -> positions of those already held (or twice in trace_ids), left as "
     "they were; the others are set (16-byte trace ids only)"},
    {"pop", (PyCFunction)(void (*)(void))table_pop, METH_FASTCALL, "pop(trace_id, default=None) -> its value, forgotten; or default"},
    {"among", (PyCFunction)table_among, METH_O, "among(trace_ids) -> the positions, in order, of those the table holds"},
    {"expire", (PyCFunction)table_expire, METH_O,
     "expire(now) -> how many traces it forgot: those whose latest learning's until is <= now"},
    {"evict", (PyCFunction)table_evict, METH_NOARGS,
     "evict() -> how many traces it forgot, oldest learned first, to hold at most max_traces"},
    {"items", (PyCFunction)table_items, METH_NOARGS, "items() -> [(trace_id, value)], in no order"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef table_members[] = {
    {"max_traces", T_PYSSIZET, offsetof(Table, max_traces), READONLY, "at most this many after evict()"},
    {"evicted", T_PYSSIZET, offsetof(Table, evicted), READONLY, "traces evict() forgot so far"},
    {"learnings", T_PYSSIZET, offsetof(Table, order_count), READONLY,
     "learnings kept in order (at most about twice the traces, or the ring's first size)"},
    {NULL, 0, 0, 0, NULL},
};

static PySequenceMethods table_sequence = {.sq_length = (lenfunc)table_length};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "processor._wire.TraceTable",
    .tp_basicsize = sizeof(Table),
    .tp_dealloc = (destructor)table_dealloc,
    .tp_as_sequence = &table_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TraceTable(max_traces, seed): 16-byte trace id -> value, with expiry and eviction in learning order",
    .tp_methods = table_methods,
    .tp_members = table_members,
    .tp_new = table_new,
};

int trace_table_add_type(PyObject *module)
{
    if (PyType_Ready(&TableType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "TraceTable", (PyObject *)&TableType);
}
