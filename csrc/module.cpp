// The Python module stub of oneshot._C. Importing it loads the shared library, whose static initialisers
// (TORCH_LIBRARY in ext.cpp, TORCH_LIBRARY_IMPL in each *_cpu.cpp / *_cuda.cu) register the ops with the
// dispatcher. The module itself exposes nothing: the ops are reached through torch.ops.oneshot.
#include <Python.h>

static struct PyModuleDef oneshot_c_module = {
    PyModuleDef_HEAD_INIT, "_C", "oneshot's compiled kernels (registered under torch.ops.oneshot)", -1, nullptr,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&oneshot_c_module); }
