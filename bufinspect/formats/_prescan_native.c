/* The pickle pre-scan of bufinspect/formats/_prescan.py in C: the same opcode walk over the
 * same shadow records, with the same limits and the same verdicts (an end offset, -1 cut short,
 * -2 malformed, or a refusal whose message is the Python walk's, word for word). Built at
 * install as an optional extension (setup.py); without it, or with BUFINSPECT_NO_KERNEL=1,
 * `_prescan.scan` runs the Python walk, which stays the reference (tests/test_prescan_native.py
 * compares the two on the hostile corpus, real checkpoints, every protocol and random bytes).
 *
 * The Python walk is the specification: each opcode below mirrors its branch there, including
 * the order in which a branch can refuse, stop (malformed/cut short) or fail. Everything that
 * raises IndexError/KeyError/struct.error/ValueError there (an empty stack, a missing memo slot,
 * an argument past the end) is STOPPED here, judged by where the opcode began; every such error
 * of one opcode gives the same verdict, so preconditions are checked up front.
 *
 * Hostile input: every read is checked against the length; offsets past the end are clamped to
 * n + 1 (the next opcode read then stops, as in Python); nothing recurses; the stack, marks,
 * memo and per-container tables grow with the opcodes read (at most one push per byte), every
 * size computation is checked for overflow, and every error path frees what it holds. Sizes
 * and hash costs saturate at SAT (2**62): every use compares them with limits far below it.
 * Hash signatures are Python's own hash() of the int, float or tuple (built only for numbers
 * that can collide), so equal signatures mean equal hashes exactly as in the Python walk.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* the limits of _prescan.py (tests compare the messages, which print them) */
#define MAX_DEPTH 1000
#define MAX_HASH_WORK 20000000LL
#define MAX_COLLISIONS 256
#define MAX_INT_BITS 2048
#define MAX_LINE 1000
#define MAX_ITEMS (1LL << 26)
#define SAT (1LL << 62)
#define SMALL_INT (1LL << 60)

enum { OK = 0, STOPPED, TRUNC, MALFORMED, REFUSED, PYERR };

static inline int64_t sat_add(int64_t a, int64_t b) { /* a, b >= 0 */
    return a >= SAT - b ? SAT : a + b;
}

/* ---- an int64 -> int64 open-addressing table (hash value -> keys with it) ---- */
typedef struct {
    int64_t *keys;
    int64_t *vals;
    uint8_t *used;
    size_t cap, len; /* cap: 0 or a power of two, len <= cap / 2 */
    int shift;
} Map;

/* the keys are hash values a file can choose: mixed with a per-process secret (from Python's
 * randomised str hash), so that no file can pile them into one run of the table */
static uint64_t map_seed;

static inline size_t map_hash(const Map *m, int64_t key) {
    uint64_t z = (uint64_t)key ^ map_seed; /* splitmix64's finaliser */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (size_t)(z >> m->shift);
}

static void map_free(Map *m) {
    PyMem_Free(m->keys);
    PyMem_Free(m->vals);
    PyMem_Free(m->used);
    memset(m, 0, sizeof *m);
}

/* the slot holding `key`, or -1 */
static Py_ssize_t map_find(const Map *m, int64_t key) {
    if (!m->cap)
        return -1;
    size_t i = map_hash(m, key);
    while (m->used[i]) {
        if (m->keys[i] == key)
            return (Py_ssize_t)i;
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

static int map_grow(Map *m) {
    size_t cap = m->cap ? m->cap * 2 : 16;
    if (cap > (size_t)PY_SSIZE_T_MAX / 16)
        return -1;
    Map g = {0};
    g.cap = cap;
    g.shift = 64;
    for (size_t c = cap; c > 1; c >>= 1)
        g.shift--;
    g.keys = PyMem_Malloc(cap * sizeof(int64_t));
    g.vals = PyMem_Malloc(cap * sizeof(int64_t));
    g.used = PyMem_Calloc(cap, 1);
    if (!g.keys || !g.vals || !g.used) {
        map_free(&g);
        return -1;
    }
    for (size_t j = 0; j < m->cap; j++) {
        if (!m->used[j])
            continue;
        size_t i = map_hash(&g, m->keys[j]);
        while (g.used[i])
            i = (i + 1) & (cap - 1);
        g.used[i] = 1;
        g.keys[i] = m->keys[j];
        g.vals[i] = m->vals[j];
    }
    g.len = m->len;
    map_free(m);
    *m = g;
    return 0;
}

/* the slot for `key`, added with value 0 when new (*added set); -1 out of memory */
static Py_ssize_t map_slot(Map *m, int64_t key, int *added) {
    Py_ssize_t at = map_find(m, key);
    *added = 0;
    if (at >= 0)
        return at;
    if ((m->len + 1) * 2 > m->cap && map_grow(m) < 0)
        return -1;
    size_t i = map_hash(m, key);
    while (m->used[i])
        i = (i + 1) & (m->cap - 1);
    m->used[i] = 1;
    m->keys[i] = key;
    m->vals[i] = 0;
    m->len++;
    *added = 1;
    return (Py_ssize_t)i;
}

/* ---- shadow records: the Python walk's [kind, depth, size, hcost, sig, extra] ---- */
typedef struct Node Node;

typedef struct {       /* the Python walk's `extra` dict (NULL: None) */
    Node *first;       /* "first": a tuple's first item (a kind-3 node, itself without one) */
    int64_t items;     /* "items" (absent: 0) */
    int64_t hitems;    /* "hitems" (absent: 0) */
    Map *counts;       /* "counts": hash value -> keys with it */
    int64_t *sigs;     /* "sigs": a list's colliding items */
    size_t nsigs, capsigs;
} Extra;

struct Node {
    Py_ssize_t refs; /* < 0: shared for the whole walk (the atom, flat tuples, globals) */
    int kind;
    int has_sig;
    Py_hash_t sig;
    int64_t depth, size, hcost;
    Extra *extra;
    Node *next_free;
};

typedef struct {
    const unsigned char *data;
    Py_ssize_t n;
    int64_t limit, max_memo, work;
    Node **stack;
    size_t sp, scap;
    size_t *marks;
    size_t mp, mcap;
    Node **tmp; /* the items a MARK opcode took off the stack (owned) */
    size_t ntmp, tcap;
    Node **dense;     /* memo slots 0 .. dcap - 1 (NULL: not set) */
    size_t dcap, dlen;
    PyObject *odd;    /* dict: any other memo slot (a Python int) -> index in oddnodes */
    Node **oddnodes;
    size_t nodd, codd;
    int64_t *sigbuf;
    size_t nsigbuf, csigbuf;
    Node *freelist;
    PyObject *msg; /* the refusal */
    Node atom, flat[8], glob0, glob5;
} S;

static int grow_array(void **arr, size_t *cap, size_t need, size_t item) {
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        if (c > (size_t)PY_SSIZE_T_MAX / (2 * item))
            return -1;
        c *= 2;
    }
    void *p = PyMem_Realloc(*arr, c * item);
    if (!p)
        return -1;
    *arr = p;
    *cap = c;
    return 0;
}

static Node *node_new(S *s, int kind, int64_t depth, int64_t size, int64_t hcost) {
    Node *x = s->freelist;
    if (x)
        s->freelist = x->next_free;
    else if (!(x = PyMem_Malloc(sizeof *x)))
        return NULL;
    x->refs = 1;
    x->kind = kind;
    x->has_sig = 0;
    x->sig = 0;
    x->depth = depth;
    x->size = size;
    x->hcost = hcost;
    x->extra = NULL;
    return x;
}

static inline void incref(Node *x) {
    if (x->refs >= 0)
        x->refs++;
}

/* drop a reference; a freed tuple drops its "first" in turn (a loop: nothing recurses) */
static void decref(S *s, Node *x) {
    while (x && x->refs >= 0 && --x->refs == 0) {
        Node *next = NULL;
        if (x->extra) {
            next = x->extra->first;
            if (x->extra->counts) {
                map_free(x->extra->counts);
                PyMem_Free(x->extra->counts);
            }
            PyMem_Free(x->extra->sigs);
            PyMem_Free(x->extra);
        }
        x->next_free = s->freelist;
        s->freelist = x;
        x = next;
    }
}

static Extra *extra_of(Node *x) {
    if (!x->extra)
        x->extra = PyMem_Calloc(1, sizeof(Extra));
    return x->extra;
}

static int refuse(S *s, PyObject *msg) {
    if (!msg)
        return PYERR;
    s->msg = msg;
    return REFUSED;
}

static int too_big(S *s, int64_t depth) {
    if (depth > MAX_DEPTH)
        return refuse(s, PyUnicode_FromFormat("containers nested more than %d deep", MAX_DEPTH));
    return refuse(s, PyUnicode_FromFormat(
        "shared references that expand to more than %lld objects", (long long)s->limit));
}

static inline int push(S *s, Node *x) { /* takes the reference */
    if (s->sp == s->scap &&
        grow_array((void **)&s->stack, &s->scap, s->sp + 1, sizeof(Node *)) < 0) {
        decref(s, x);
        return PYERR;
    }
    s->stack[s->sp++] = x;
    return OK;
}

static int push_new(S *s, int kind, int64_t depth, int64_t size, int64_t hcost) {
    Node *x = node_new(s, kind, depth, size, hcost);
    return x ? push(s, x) : PYERR;
}

static void release_tmp(S *s) {
    for (size_t i = 0; i < s->ntmp; i++)
        decref(s, s->tmp[i]);
    s->ntmp = 0;
}

/* take_mark: the items above the last MARK move to s->tmp (none when the stack has shrunk
 * below the mark, as Python's slice gives) */
static int take_mark(S *s) {
    if (!s->mp)
        return STOPPED;
    size_t at = s->marks[--s->mp];
    size_t k = s->sp > at ? s->sp - at : 0;
    if (grow_array((void **)&s->tmp, &s->tcap, k, sizeof(Node *)) < 0)
        return PYERR;
    if (k)
        memcpy(s->tmp, s->stack + at, k * sizeof(Node *));
    s->ntmp = k;
    if (k)
        s->sp = at;
    return OK;
}

/* the hash signature of a tuple of signatures: Python's hash() of that tuple */
static int tuple_sig(S *s, Py_hash_t *out) {
    PyObject *t = PyTuple_New((Py_ssize_t)s->nsigbuf);
    if (!t)
        return PYERR;
    for (size_t i = 0; i < s->nsigbuf; i++) {
        PyObject *v = PyLong_FromSsize_t((Py_ssize_t)s->sigbuf[i]);
        if (!v) {
            Py_DECREF(t);
            return PYERR;
        }
        PyTuple_SET_ITEM(t, (Py_ssize_t)i, v);
    }
    Py_hash_t h = PyObject_Hash(t);
    Py_DECREF(t);
    if (h == -1 && PyErr_Occurred())
        return PYERR;
    *out = h;
    return OK;
}

/* container(kind, items): a new tuple (2) or built container (3) */
static int container(S *s, int kind, Node **items, size_t count, Node **out) {
    int64_t depth = 0, size = 0, hcost = 1;
    int have_sigs = 0;
    s->nsigbuf = 0;
    for (size_t i = 0; i < count; i++) {
        Node *it = items[i];
        if (it == &s->atom) {
            size = sat_add(size, 1);
            hcost = sat_add(hcost, 1);
            continue;
        }
        if (it->depth > depth)
            depth = it->depth;
        size = sat_add(size, it->size);
        if (it->kind <= 2) {
            hcost = sat_add(hcost, it->hcost);
            if (it->has_sig && kind == 2) {
                if (grow_array((void **)&s->sigbuf, &s->csigbuf, s->nsigbuf + 1,
                               sizeof(int64_t)) < 0)
                    return PYERR;
                s->sigbuf[s->nsigbuf++] = it->sig;
                have_sigs = 1;
            }
        }
    }
    depth += 1;
    size = sat_add(size, 1);
    if (depth > MAX_DEPTH || size > s->limit)
        return too_big(s, depth);
    Py_hash_t sig = 0;
    if (have_sigs && tuple_sig(s, &sig) != OK)
        return PYERR;
    Node *x = node_new(s, kind, depth, size, kind == 2 ? hcost : 1);
    if (!x)
        return PYERR;
    x->has_sig = have_sigs;
    x->sig = sig;
    if (kind != 2) {
        if (!extra_of(x)) {
            decref(s, x);
            return PYERR;
        }
        x->extra->items = (int64_t)count;
    } else if (count && items[0]->kind == 3 && items[0]->depth) { /* set([...])? */
        if (!extra_of(x)) {
            decref(s, x);
            return PYERR;
        }
        x->extra->first = items[0];
        incref(items[0]);
    }
    *out = x;
    return OK;
}

/* one key hashed into a table with hash counts `counts` */
static int count_sig(S *s, Map *counts, Py_hash_t sig) {
    int added;
    Py_ssize_t at = map_slot(counts, (int64_t)sig, &added);
    if (at < 0)
        return PYERR;
    if (++counts->vals[at] > MAX_COLLISIONS)
        return refuse(s, PyUnicode_FromFormat(
            "more than %d keys with one hash value (a hash-collision attack)", MAX_COLLISIONS));
    return OK;
}

static int work_check(S *s) {
    if (s->work > MAX_HASH_WORK)
        return refuse(s, PyUnicode_FromFormat(
            "keys that cost more than %lld steps to hash (deep or shared tuples)",
            (long long)MAX_HASH_WORK));
    return OK;
}

/* hashed(extra, keys): keys are items[0], items[stride], ... */
static int hashed(S *s, Extra *extra, Node **items, size_t count, size_t stride) {
    int64_t w = s->work;
    for (size_t i = 0; i < count; i += stride) {
        Node *k = items[i];
        if (k == &s->atom) {
            w = sat_add(w, 1);
            continue;
        }
        w = sat_add(w, k->kind <= 2 ? k->hcost : 1);
        if (k->has_sig) {
            if (!extra->counts && !(extra->counts = PyMem_Calloc(1, sizeof(Map))))
                return PYERR;
            int rc = count_sig(s, extra->counts, k->sig);
            if (rc != OK)
                return rc;
        }
    }
    s->work = w;
    return work_check(s);
}

/* grow(box, items, keys): items added to a mutable container; a box that is not one is
 * checked as a copy that is then dropped, as in the Python walk. stride 0: no keys. */
static int grow(S *s, Node *box, Node **items, size_t count, size_t stride) {
    Node *copy = NULL;
    int rc = OK;
    if (box->kind != 3) {
        if (!(copy = node_new(s, 3, box->depth, box->size, 1)))
            return PYERR;
        box = copy;
    }
    Extra *extra = extra_of(box);
    if (!extra) {
        rc = PYERR;
        goto done;
    }
    int64_t total = extra->items + (int64_t)count;
    if (total > MAX_ITEMS) {
        rc = refuse(s, PyUnicode_FromFormat("a container of more than %lld items",
                                            (long long)MAX_ITEMS));
        goto done;
    }
    extra->items = total;
    int64_t size = box->size, depth = box->depth;
    for (size_t i = 0; i < count; i++) {
        Node *it = items[i];
        if (it == &s->atom) {
            size = sat_add(size, 1);
            continue;
        }
        size = sat_add(size, it->size);
        if (it->depth >= depth)
            depth = it->depth + 1;
    }
    if (depth > MAX_DEPTH || size > s->limit) {
        rc = too_big(s, depth);
        goto done;
    }
    box->size = size;
    box->depth = depth;
    if (stride)
        rc = hashed(s, extra, items, count, stride);
done:
    if (copy)
        decref(s, copy);
    return rc;
}

/* listed(box, items): what hashing a list's items would cost, should it become a set */
static int listed(S *s, Node *box, Node **items, size_t count) {
    if (box->kind != 3)
        return OK;
    Extra *extra = extra_of(box);
    if (!extra)
        return PYERR;
    int64_t h = 0;
    for (size_t i = 0; i < count; i++) {
        Node *it = items[i];
        if (it == &s->atom) {
            h = sat_add(h, 1);
            continue;
        }
        h = sat_add(h, it->kind <= 2 ? it->hcost : 1);
        if (it->has_sig) {
            if (grow_array((void **)&extra->sigs, &extra->capsigs, extra->nsigs + 1,
                           sizeof(int64_t)) < 0)
                return PYERR;
            extra->sigs[extra->nsigs++] = it->sig;
        }
    }
    extra->hitems = sat_add(extra->hitems, h);
    return OK;
}

/* set_call(args): set([...]) / frozenset([...]): the list's items are hashed now */
static int set_call(S *s, Node *args) {
    if (args->kind != 2 || !args->extra)
        return OK;
    Node *first = args->extra->first;
    if (!first || first->kind != 3 || !first->extra)
        return OK;
    Extra *fx = first->extra;
    s->work = sat_add(s->work, fx->hitems);
    Map counts = {0};
    int rc = OK;
    for (size_t i = 0; i < fx->nsigs && rc == OK; i++)
        rc = count_sig(s, &counts, (Py_hash_t)fx->sigs[i]);
    map_free(&counts);
    return rc != OK ? rc : work_check(s);
}

/* _number(value) for a Python int or float (a new reference is consumed) */
static int number(S *s, PyObject *v, Node **out) {
    if (!v)
        return PYERR;
    if (PyLong_CheckExact(v)) {
        PyObject *bits = PyObject_CallMethod(v, "bit_length", NULL);
        if (!bits) {
            Py_DECREF(v);
            return PYERR;
        }
        long long nbits = PyLong_AsLongLong(bits);
        Py_DECREF(bits);
        if (nbits == -1 && PyErr_Occurred()) {
            Py_DECREF(v);
            return PYERR;
        }
        if (nbits > MAX_INT_BITS) {
            Py_DECREF(v);
            return refuse(s, PyUnicode_FromFormat(
                "an integer of %lld bits (more than any checkpoint holds)", nbits));
        }
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred()) {
            Py_DECREF(v);
            return PYERR;
        }
        if (!overflow && -SMALL_INT < x && x < SMALL_INT) { /* hash(n) == n: no collisions */
            Py_DECREF(v);
            *out = &s->atom;
            return OK;
        }
    }
    Py_hash_t h = PyObject_Hash(v);
    Py_DECREF(v);
    if (h == -1 && PyErr_Occurred())
        return PYERR;
    Node *x = node_new(s, 1, 0, 1, 1);
    if (!x)
        return PYERR;
    x->has_sig = 1;
    x->sig = h;
    *out = x;
    return OK;
}

/* int.from_bytes(data[at:at + k], "little", signed=True) */
static PyObject *int_from_bytes(const unsigned char *p, Py_ssize_t k) {
    PyObject *b = PyBytes_FromStringAndSize((const char *)p, k);
    if (!b)
        return NULL;
    PyObject *args = Py_BuildValue("(Os)", b, "little");
    Py_DECREF(b);
    PyObject *kw = args ? Py_BuildValue("{s:O}", "signed", Py_True) : NULL;
    PyObject *from = kw ? PyObject_GetAttrString((PyObject *)&PyLong_Type, "from_bytes") : NULL;
    PyObject *v = from ? PyObject_Call(from, args, kw) : NULL;
    Py_XDECREF(from);
    Py_XDECREF(kw);
    Py_XDECREF(args);
    return v;
}

/* a ValueError/OverflowError of int()/float() on a text line: the walk stops there */
static int py_failed(void) {
    if (PyErr_ExceptionMatches(PyExc_ValueError) || PyErr_ExceptionMatches(PyExc_OverflowError)) {
        PyErr_Clear();
        return STOPPED;
    }
    return PYERR;
}

/* line(): the text up to the next newline (refused beyond MAX_LINE bytes) */
static int line(S *s, Py_ssize_t *pos, const unsigned char **text, Py_ssize_t *len) {
    if (*pos >= s->n)
        return TRUNC;
    const unsigned char *p = s->data + *pos;
    const unsigned char *end = memchr(p, '\n', (size_t)(s->n - *pos));
    if (!end)
        return TRUNC;
    if (end - p > MAX_LINE)
        return refuse(s, PyUnicode_FromFormat("a text-encoded number or name of %zd bytes",
                                              (Py_ssize_t)(end - p)));
    *text = p;
    *len = end - p;
    *pos += *len + 1;
    return OK;
}

/* conv(bytes) of a text number, `conv` being Python's own int() (PyNumber_Long) or float()
 * (PyFloat_FromString): STOPPED where it raises ValueError/OverflowError, as the walk stops */
static int text_value(const unsigned char *t, Py_ssize_t k, PyObject *(*conv)(PyObject *),
                      PyObject **out) {
    PyObject *b = PyBytes_FromStringAndSize((const char *)t, k);
    if (!b)
        return PYERR;
    *out = conv(b);
    Py_DECREF(b);
    return *out ? OK : py_failed();
}

/* int(line()) as a Python int */
static int line_int(S *s, Py_ssize_t *pos, PyObject **out) {
    const unsigned char *t;
    Py_ssize_t k;
    int rc = line(s, pos, &t, &k);
    return rc != OK ? rc : text_value(t, k, PyNumber_Long, out);
}

/* ---- the memo: slots 0.. as the picklers write them (in order) in an array; any other slot
 * (sparse, negative, beyond int64: only a hand-made pickle has them) in a Python dict, as in
 * the Python walk. The array only grows to twice the slots used (+1024), so its size follows
 * the opcodes read, never a number from the file; a slot below its end is never in the dict
 * (moved over when it grows). ---- */
static size_t memo_len(S *s) { return s->dlen + (s->odd ? (size_t)PyDict_GET_SIZE(s->odd) : 0); }

/* the node of a dict slot `key`: NULL with no error set when missing */
static Node *odd_get(S *s, PyObject *key) {
    PyObject *at = s->odd ? PyDict_GetItemWithError(s->odd, key) : NULL;
    return at ? s->oddnodes[PyLong_AsSize_t(at)] : NULL;
}

static int odd_put(S *s, PyObject *key, Node *x) {
    if (!s->odd && !(s->odd = PyDict_New()))
        return PYERR;
    PyObject *at = PyDict_GetItemWithError(s->odd, key);
    if (at) {
        size_t i = PyLong_AsSize_t(at);
        incref(x);
        decref(s, s->oddnodes[i]);
        s->oddnodes[i] = x;
        return OK;
    }
    if (PyErr_Occurred() ||
        grow_array((void **)&s->oddnodes, &s->codd, s->nodd + 1, sizeof(Node *)) < 0)
        return PYERR;
    PyObject *idx = PyLong_FromSize_t(s->nodd);
    if (!idx || PyDict_SetItem(s->odd, key, idx) < 0) {
        Py_XDECREF(idx);
        return PYERR;
    }
    Py_DECREF(idx);
    incref(x);
    s->oddnodes[s->nodd++] = x;
    return OK;
}

/* grow the array to cover slot `key`, moving dict slots it now covers */
static int dense_grow(S *s, int64_t key) {
    size_t cap = s->dcap ? s->dcap : 256;
    while (cap <= (size_t)key)
        cap *= 2;
    Node **d = PyMem_Realloc(s->dense, cap * sizeof(Node *));
    if (!d)
        return PYERR;
    memset(d + s->dcap, 0, (cap - s->dcap) * sizeof(Node *));
    s->dense = d;
    s->dcap = cap;
    if (!s->odd || !PyDict_GET_SIZE(s->odd))
        return OK;
    PyObject *moved = PyList_New(0), *k, *v;
    Py_ssize_t it = 0;
    if (!moved)
        return PYERR;
    while (PyDict_Next(s->odd, &it, &k, &v)) {
        int overflow;
        long long slot = PyLong_AsLongLongAndOverflow(k, &overflow);
        if (overflow || slot < 0 || (size_t)slot >= cap)
            continue;
        size_t i = PyLong_AsSize_t(v);
        s->dense[slot] = s->oddnodes[i]; /* the reference moves */
        s->oddnodes[i] = NULL;
        s->dlen++;
        if (PyList_Append(moved, k) < 0) {
            Py_DECREF(moved);
            return PYERR;
        }
    }
    for (Py_ssize_t j = 0; j < PyList_GET_SIZE(moved); j++)
        if (PyDict_DelItem(s->odd, PyList_GET_ITEM(moved, j)) < 0) {
            Py_DECREF(moved);
            return PYERR;
        }
    Py_DECREF(moved);
    return OK;
}

/* memo[key] (NULL: missing; *err set on a Python error) */
static Node *memo_get(S *s, int64_t key, int *err) {
    *err = 0;
    if (key >= 0 && (uint64_t)key < s->dcap)
        return s->dense[key];
    if (!s->odd)
        return NULL;
    PyObject *k = PyLong_FromLongLong(key);
    Node *x = k ? odd_get(s, k) : NULL;
    Py_XDECREF(k);
    *err = PyErr_Occurred() != NULL;
    return x;
}

static int memo_put(S *s, int64_t key, Node *x) {
    if (key >= 0 && (uint64_t)key >= s->dcap && (uint64_t)key < 2 * memo_len(s) + 1024)
        if (dense_grow(s, key) != OK)
            return PYERR;
    if (key >= 0 && (uint64_t)key < s->dcap) {
        incref(x);
        if (s->dense[key])
            decref(s, s->dense[key]);
        else
            s->dlen++;
        s->dense[key] = x;
        return OK;
    }
    PyObject *k = PyLong_FromLongLong(key);
    if (!k)
        return PYERR;
    int rc = odd_put(s, k, x);
    Py_DECREF(k);
    return rc;
}

static int memo_put_obj(S *s, PyObject *key, Node *x) {
    int overflow;
    long long k = PyLong_AsLongLongAndOverflow(key, &overflow);
    if (k == -1 && PyErr_Occurred())
        return PYERR;
    return overflow ? odd_put(s, key, x) : memo_put(s, k, x);
}

static int memo_get_obj(S *s, PyObject *key, Node **out) {
    int overflow, err = 0;
    long long k = PyLong_AsLongLongAndOverflow(key, &overflow);
    if (k == -1 && PyErr_Occurred())
        return PYERR;
    *out = overflow ? odd_get(s, key) : memo_get(s, k, &err);
    if (err || PyErr_Occurred())
        return PYERR;
    return *out ? OK : STOPPED;
}

static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static inline uint32_t rd_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t rd_u64(const unsigned char *p) {
    return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32;
}

#define NEED(k) do { if (pos > n - (Py_ssize_t)(k)) return STOPPED; } while (0)
#define NEEDSTACK(k) do { if (s->sp < (size_t)(k)) return STOPPED; } while (0)
#define TRY(call) do { int rc_ = (call); if (rc_ != OK) return rc_; } while (0)
/* pos += k for a k read from the file: anything past the end is n + 1 (the next read stops) */
#define ADV(k) do { uint64_t k_ = (uint64_t)(k); \
    pos = k_ > (uint64_t)(n + 1 - pos) ? n + 1 : pos + (Py_ssize_t)k_; } while (0)
#define TOP (s->stack[s->sp - 1])

/* replace the top `k` stack items by x (a new reference) */
static int replace(S *s, size_t k, Node *x) {
    if (!x)
        return PYERR;
    for (size_t i = 0; i < k; i++)
        decref(s, s->stack[--s->sp]);
    return push(s, x);
}

static int set_builder(const unsigned char *m, Py_ssize_t mk, const unsigned char *f,
                       Py_ssize_t fk) {
    int mod = (mk == 8 && !memcmp(m, "builtins", 8)) || (mk == 11 && !memcmp(m, "__builtin__", 11));
    return mod && ((fk == 3 && !memcmp(f, "set", 3)) || (fk == 9 && !memcmp(f, "frozenset", 9)));
}

/* the walk; *posp is the offset of the opcode being read (for the verdict of a STOPPED) */
static int walk(S *s, Py_ssize_t *startp, Py_ssize_t *endp) {
    const unsigned char *data = s->data;
    const Py_ssize_t n = s->n;
    Py_ssize_t pos = *startp;
    Node *x;
    int err;
    for (;;) {
        *startp = pos;
        if (pos >= n)
            return STOPPED;
        unsigned char op = data[pos++];
        switch (op) {
        case 0x72: { /* LONG_BINPUT */
            NEED(4);
            uint32_t idx = rd_u32(data + pos);
            pos += 4;
            if ((int64_t)idx > s->max_memo)
                return refuse(s, PyUnicode_FromFormat("memo slot %lu in a pickle of %zd bytes",
                                                      (unsigned long)idx, n));
            NEEDSTACK(1);
            TRY(memo_put(s, idx, TOP));
            break;
        }
        case 0x68: /* BINGET */
            NEED(1);
            if (!(x = memo_get(s, data[pos], &err)))
                return err ? PYERR : STOPPED;
            incref(x);
            TRY(push(s, x));
            pos += 1;
            break;
        case 0x4B: /* BININT1 */
            ADV(1);
            TRY(push(s, &s->atom));
            break;
        case 0x58: /* BINUNICODE */
        case 0x54: /* BINSTRING */
        case 0x42: /* BINBYTES */
            NEED(4);
            ADV(4 + (uint64_t)rd_u32(data + pos));
            TRY(push(s, &s->atom));
            break;
        case 0x28: /* MARK */
            if (s->mp == s->mcap &&
                grow_array((void **)&s->marks, &s->mcap, s->mp + 1, sizeof(size_t)) < 0)
                return PYERR;
            s->marks[s->mp++] = s->sp;
            break;
        case 0x74: { /* TUPLE */
            TRY(take_mark(s));
            int plain = 1;
            for (size_t i = 0; i < s->ntmp; i++)
                if (s->tmp[i]->depth || s->tmp[i]->has_sig) {
                    plain = 0;
                    break;
                }
            if (plain && s->ntmp < 8)
                x = &s->flat[s->ntmp];
            else
                TRY(container(s, 2, s->tmp, s->ntmp, &x));
            release_tmp(s);
            TRY(push(s, x));
            break;
        }
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: { /* TUPLE3 */
            size_t k = op - 0x84;
            NEEDSTACK(k);
            Node **items = s->stack + s->sp - k;
            int plain = 1;
            for (size_t i = 0; i < k; i++)
                if (items[i]->depth || items[i]->has_sig)
                    plain = 0;
            if (plain)
                x = &s->flat[k];
            else
                TRY(container(s, 2, items, k, &x));
            TRY(replace(s, k, x));
            break;
        }
        case 0x52: /* REDUCE */
            NEEDSTACK(2);
            if (s->stack[s->sp - 2]->kind == 5)
                TRY(set_call(s, TOP));
            TRY(replace(s, 2, node_new(s, 3, TOP->depth, TOP->size, 1)));
            break;
        case 0x51: /* BINPERSID */
            NEEDSTACK(1);
            TRY(replace(s, 1, node_new(s, 3, 0, 1, 1)));
            break;
        case 0x89: case 0x88: case 0x4E: case 0x29: /* False True None () */
            TRY(push(s, &s->atom));
            break;
        case 0x71: /* BINPUT */
            NEED(1);
            NEEDSTACK(1);
            TRY(memo_put(s, data[pos], TOP));
            pos += 1;
            break;
        case 0x7D: case 0x5D: case 0x8F: /* EMPTY_DICT EMPTY_LIST EMPTY_SET */
        case 0x97:                       /* NEXT_BUFFER */
            TRY(push_new(s, 3, 1, 1, 1));
            break;
        case 0x75: /* SETITEMS */
            if (!s->mp)
                return STOPPED;
            if ((s->sp > s->marks[s->mp - 1] ? s->sp - s->marks[s->mp - 1] : 0) % 2)
                return MALFORMED;
            TRY(take_mark(s));
            NEEDSTACK(1);
            TRY(grow(s, TOP, s->tmp, s->ntmp, 2));
            release_tmp(s);
            break;
        case 0x65: /* APPENDS */
            TRY(take_mark(s));
            NEEDSTACK(1);
            TRY(listed(s, TOP, s->tmp, s->ntmp));
            TRY(grow(s, TOP, s->tmp, s->ntmp, 0));
            release_tmp(s);
            break;
        case 0x6A: /* LONG_BINGET */
            NEED(4);
            if (!(x = memo_get(s, rd_u32(data + pos), &err)))
                return err ? PYERR : STOPPED;
            incref(x);
            TRY(push(s, x));
            pos += 4;
            break;
        case 0x94: /* MEMOIZE */
            NEEDSTACK(1);
            TRY(memo_put(s, (int64_t)memo_len(s), TOP));
            break;
        case 0x8C: /* SHORT_BINUNICODE */
        case 0x55: /* SHORT_BINSTRING */
        case 0x43: /* SHORT_BINBYTES */
            NEED(1);
            ADV(1 + (uint64_t)data[pos]);
            TRY(push(s, &s->atom));
            break;
        case 0x63: { /* GLOBAL */
            const unsigned char *m, *f;
            Py_ssize_t mk, fk;
            TRY(line(s, &pos, &m, &mk));
            TRY(line(s, &pos, &f, &fk));
            TRY(push(s, set_builder(m, mk, f, fk) ? &s->glob5 : &s->glob0));
            break;
        }
        case 0x93: /* STACK_GLOBAL (its names are not tracked: strings are atoms) */
            NEEDSTACK(2);
            TRY(replace(s, 2, &s->glob5));
            break;
        case 0x4A: /* BININT */
            ADV(4);
            TRY(push(s, &s->atom));
            break;
        case 0x4D: /* BININT2 */
            ADV(2);
            TRY(push(s, &s->atom));
            break;
        case 0x73: /* SETITEM */
            NEEDSTACK(3);
            TRY(grow(s, s->stack[s->sp - 3], s->stack + s->sp - 2, 2, 2));
            decref(s, s->stack[--s->sp]);
            decref(s, s->stack[--s->sp]);
            break;
        case 0x61: /* APPEND */
            NEEDSTACK(2);
            TRY(listed(s, s->stack[s->sp - 2], s->stack + s->sp - 1, 1));
            TRY(grow(s, s->stack[s->sp - 2], s->stack + s->sp - 1, 1, 0));
            decref(s, s->stack[--s->sp]);
            break;
        case 0x62: { /* BUILD */
            NEEDSTACK(2);
            Node *state = TOP, *obj = s->stack[s->sp - 2];
            if (obj->kind == 3) {
                TRY(grow(s, obj, s->stack + s->sp - 1, 1, 0));
                decref(s, s->stack[--s->sp]);
            } else {
                TRY(replace(s, 2, node_new(s, 3, state->depth + 1, sat_add(state->size, 1), 1)));
            }
            break;
        }
        case 0x81: /* NEWOBJ */
            NEEDSTACK(2);
            TRY(replace(s, 2, node_new(s, 3, TOP->depth, TOP->size, 1)));
            break;
        case 0x92: { /* NEWOBJ_EX */
            NEEDSTACK(3);
            Node *kw = TOP, *args = s->stack[s->sp - 2];
            TRY(replace(s, 3, node_new(s, 3, max64(args->depth, kw->depth),
                                       sat_add(args->size, kw->size), 1)));
            break;
        }
        case 0x30: /* POP */
            if (s->mp && s->marks[s->mp - 1] == s->sp) {
                s->mp--; /* POP of a bare MARK, as the unpickler allows */
            } else {
                NEEDSTACK(1);
                decref(s, s->stack[--s->sp]);
            }
            break;
        case 0x31: /* POP_MARK */
            TRY(take_mark(s));
            release_tmp(s);
            break;
        case 0x32: /* DUP */
            NEEDSTACK(1);
            incref(TOP);
            TRY(push(s, TOP));
            break;
        case 0x47: { /* BINFLOAT (big-endian) */
            NEED(8);
            uint64_t u = 0;
            for (int i = 0; i < 8; i++)
                u = u << 8 | data[pos + i];
            double d;
            memcpy(&d, &u, 8);
            TRY(number(s, PyFloat_FromDouble(d), &x));
            TRY(push(s, x));
            pos += 8;
            break;
        }
        case 0x46: { /* FLOAT */
            const unsigned char *t;
            Py_ssize_t k;
            PyObject *v;
            TRY(line(s, &pos, &t, &k));
            TRY(text_value(t, k, PyFloat_FromString, &v));
            TRY(number(s, v, &x));
            TRY(push(s, x));
            break;
        }
        case 0x49: /* INT (and the protocol-0 booleans I00/I01) */
        case 0x4C: { /* LONG */
            const unsigned char *t;
            Py_ssize_t k;
            TRY(line(s, &pos, &t, &k));
            if (op == 0x49 && k == 2 && t[0] == '0' && (t[1] == '0' || t[1] == '1')) {
                TRY(push(s, &s->atom));
                break;
            }
            if (op == 0x4C && k && t[k - 1] == 'L')
                k--;
            PyObject *v;
            TRY(text_value(t, k, PyNumber_Long, &v));
            TRY(number(s, v, &x));
            TRY(push(s, x));
            break;
        }
        case 0x8A: { /* LONG1 */
            NEED(1);
            Py_ssize_t k = data[pos];
            pos += 1 + k;
            if (pos > n)
                return TRUNC;
            if (k < 8)
                x = &s->atom; /* under 2**55: an atom (hash(n) == n) */
            else
                TRY(number(s, int_from_bytes(data + pos - k, k), &x));
            TRY(push(s, x));
            break;
        }
        case 0x8B: { /* LONG4 */
            NEED(4);
            int32_t k = (int32_t)rd_u32(data + pos);
            if ((int64_t)k * 8 > MAX_INT_BITS)
                return refuse(s, PyUnicode_FromFormat(
                    "an integer of %lld bits (more than any checkpoint holds)",
                    (long long)k * 8));
            if (k < 0)
                return MALFORMED;
            pos += 4 + k;
            if (pos > n)
                return TRUNC;
            if (k < 8)
                x = &s->atom;
            else
                TRY(number(s, int_from_bytes(data + pos - k, k), &x));
            TRY(push(s, x));
            break;
        }
        case 0x8D: /* BINUNICODE8 */
        case 0x8E: /* BINBYTES8 */
        case 0x96: /* BYTEARRAY8 */
            NEED(8);
            {
                uint64_t k = rd_u64(data + pos);
                ADV(8);
                ADV(k);
            }
            TRY(op == 0x96 ? push_new(s, 3, 1, 1, 1) : push(s, &s->atom));
            break;
        case 0x53: /* STRING */
        case 0x56: { /* UNICODE (text lines of any length) */
            const unsigned char *end =
                pos < n ? memchr(data + pos, '\n', (size_t)(n - pos)) : NULL;
            if (!end)
                return TRUNC;
            pos = end - data + 1;
            TRY(push(s, &s->atom));
            break;
        }
        case 0x6C: /* LIST */
            TRY(take_mark(s));
            TRY(container(s, 3, s->tmp, s->ntmp, &x));
            if (listed(s, x, s->tmp, s->ntmp) != OK) {
                decref(s, x);
                return PYERR;
            }
            release_tmp(s);
            TRY(push(s, x));
            break;
        case 0x64: /* DICT */
        case 0x91: { /* FROZENSET (hashable; its hash is computed once and cached) */
            if (!s->mp)
                return STOPPED;
            if (op == 0x64 && (s->sp > s->marks[s->mp - 1] ? s->sp - s->marks[s->mp - 1] : 0) % 2)
                return MALFORMED;
            TRY(take_mark(s));
            TRY(container(s, 3, s->tmp, s->ntmp, &x));
            int rc = hashed(s, x->extra, s->tmp, s->ntmp, op == 0x64 ? 2 : 1);
            if (rc != OK) {
                decref(s, x);
                return rc;
            }
            release_tmp(s);
            TRY(push(s, x));
            break;
        }
        case 0x90: /* ADDITEMS */
            TRY(take_mark(s));
            NEEDSTACK(1);
            TRY(grow(s, TOP, s->tmp, s->ntmp, 1));
            release_tmp(s);
            break;
        case 0x67: { /* GET */
            PyObject *key;
            TRY(line_int(s, &pos, &key));
            int rc = memo_get_obj(s, key, &x);
            Py_DECREF(key);
            if (rc != OK)
                return rc;
            incref(x);
            TRY(push(s, x));
            break;
        }
        case 0x70: { /* PUT */
            PyObject *key;
            TRY(line_int(s, &pos, &key));
            int overflow;
            long long k = PyLong_AsLongLongAndOverflow(key, &overflow);
            if (k == -1 && PyErr_Occurred()) {
                Py_DECREF(key);
                return PYERR;
            }
            if (overflow > 0 || (!overflow && k > s->max_memo)) {
                int rc = refuse(s, PyUnicode_FromFormat("memo slot %S in a pickle of %zd bytes",
                                                        key, n));
                Py_DECREF(key);
                return rc;
            }
            int rc = s->sp ? memo_put_obj(s, key, TOP) : STOPPED;
            Py_DECREF(key);
            if (rc != OK)
                return rc;
            break;
        }
        case 0x69: { /* INST: module and name lines, then the marked arguments */
            const unsigned char *t;
            Py_ssize_t k;
            TRY(line(s, &pos, &t, &k));
            TRY(line(s, &pos, &t, &k));
            TRY(take_mark(s));
            TRY(container(s, 3, s->tmp, s->ntmp, &x));
            release_tmp(s);
            TRY(push(s, x));
            break;
        }
        case 0x6F: /* OBJ */
            TRY(take_mark(s));
            TRY(container(s, 3, s->tmp + (s->ntmp ? 1 : 0), s->ntmp ? s->ntmp - 1 : 0, &x));
            release_tmp(s);
            TRY(push(s, x));
            break;
        case 0x50: { /* PERSID */
            const unsigned char *t;
            Py_ssize_t k;
            TRY(line(s, &pos, &t, &k));
            TRY(push_new(s, 3, 0, 1, 1));
            break;
        }
        case 0x82: case 0x83: case 0x84: /* EXT1 EXT2 EXT4 */
            ADV(op == 0x82 ? 1 : op == 0x83 ? 2 : 4);
            TRY(push(s, &s->glob5));
            break;
        case 0x80: /* PROTO */
            ADV(1);
            break;
        case 0x95: /* FRAME: frames are transparent to the opcode stream */
            ADV(8);
            break;
        case 0x98: /* READONLY_BUFFER */
            break;
        case 0x2E: /* STOP */
            *endp = pos;
            return OK;
        default:
            return MALFORMED; /* an opcode that does not exist: the unpickler refuses it too */
        }
    }
}

static void shared_node(Node *x, int kind, int64_t depth, int64_t size, int64_t hcost) {
    memset(x, 0, sizeof *x);
    x->refs = -1;
    x->kind = kind;
    x->depth = depth;
    x->size = size;
    x->hcost = hcost;
}

/* scan(data: bytes, start: int) -> the end offset, -1 (cut short), -2 (malformed) or the
 * message of a refusal (str) */
static PyObject *py_scan(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "y*n", &buf, &start))
        return NULL;
    if (start < 0) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "start must be >= 0");
        return NULL;
    }
    if (start > buf.len)
        start = buf.len; /* the same verdict: cut short */
    S s;
    memset(&s, 0, sizeof s);
    s.data = buf.buf;
    s.n = buf.len;
    s.limit = (1LL << 26) + 64 * (int64_t)buf.len; /* max_expansion(n) */
    s.max_memo = (int64_t)buf.len + 16;
    shared_node(&s.atom, 0, 0, 1, 1);
    for (int k = 0; k < 8; k++) /* tuples of atoms only: one shared node per length */
        shared_node(&s.flat[k], 2, 1, k + 1, k + 1);
    shared_node(&s.glob0, 0, 0, 1, 1);
    shared_node(&s.glob5, 5, 0, 1, 1);

    Py_ssize_t at = start, end = 0;
    int rc = walk(&s, &at, &end);

    PyObject *result = NULL;
    if (rc == OK)
        result = PyLong_FromSsize_t(end);
    else if (rc == STOPPED) /* cut short near the end of the bytes, or malformed */
        result = PyLong_FromLong(at + 16 >= s.n ? -1 : -2);
    else if (rc == TRUNC)
        result = PyLong_FromLong(-1);
    else if (rc == MALFORMED)
        result = PyLong_FromLong(-2);
    else if (rc == REFUSED) {
        result = s.msg;
        s.msg = NULL;
    } else if (!PyErr_Occurred())
        PyErr_NoMemory();

    release_tmp(&s);
    while (s.sp)
        decref(&s, s.stack[--s.sp]);
    for (size_t i = 0; i < s.dcap; i++)
        decref(&s, s.dense[i]);
    for (size_t i = 0; i < s.nodd; i++)
        decref(&s, s.oddnodes[i]);
    PyMem_Free(s.dense);
    Py_XDECREF(s.odd);
    Py_XDECREF(s.msg);
    PyMem_Free(s.stack);
    PyMem_Free(s.marks);
    PyMem_Free(s.tmp);
    PyMem_Free(s.oddnodes);
    PyMem_Free(s.sigbuf);
    while (s.freelist) {
        Node *x = s.freelist;
        s.freelist = x->next_free;
        PyMem_Free(x);
    }
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", py_scan, METH_VARARGS,
     "scan(data, start) -> end offset, -1 (cut short), -2 (malformed) or a refusal message"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_prescan_native",
                                    "The pickle pre-scan of _prescan.py, in C.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__prescan_native(void) {
    PyObject *salt = PyUnicode_FromString("bufinspect.formats._prescan_native");
    if (!salt)
        return NULL;
    Py_hash_t h = PyObject_Hash(salt);
    Py_DECREF(salt);
    if (h == -1 && PyErr_Occurred())
        return NULL;
    map_seed = (uint64_t)h ^ (uint64_t)(uintptr_t)&map_seed;
    return PyModule_Create(&module);
}
