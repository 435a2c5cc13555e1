/* The trace memory's table (_trace_table.c), as the rest of processor._wire sees it. */
#ifndef TRACE_TABLE_H
#define TRACE_TABLE_H

#include <Python.h>

/* Adds the TraceTable type to the module; -1 with an exception on failure. */
int trace_table_add_type(PyObject *module);

/* Whether obj is a TraceTable. */
int trace_table_check(PyObject *obj);

/* The value the table holds for trace_id (a borrowed reference), or NULL if none: trace_id is not a
 * 16-byte bytes object, or the table does not hold it. Never raises. */
PyObject *trace_table_get(PyObject *table, PyObject *trace_id);

/* Asks for the cache line trace_id's lookup will read (a pass over many looks a few ahead). */
void trace_table_prefetch(PyObject *table, PyObject *trace_id);

#endif
