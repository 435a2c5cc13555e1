/* User agents (_user_agents.c), as the rest of processor._wire sees them. */
#ifndef USER_AGENTS_H
#define USER_AGENTS_H

#include <Python.h>

/* Adds the UserAgentCache type and the automaton() function to the module; -1 with an exception on failure. */
int user_agents_add_to(PyObject *module);

#endif
