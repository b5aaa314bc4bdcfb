"""A minimal stand-in for the `conan` package (Conan 2), enough to import a
recipe and call its methods offline: it records what the recipe asks for
and builds nothing. Conan itself cannot be installed on this machine."""


class _Options(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


class _Component:
    def __init__(self):
        self.libs = []
        self.requires = []
        self.system_libs = []
        self.properties = {}

    def set_property(self, name, value):
        self.properties[name] = value


class _Components(dict):
    def __missing__(self, name):
        self[name] = _Component()
        return self[name]


class _CppInfo(_Component):
    def __init__(self):
        super().__init__()
        self.components = _Components()


class ConanFile:
    name = None
    version = None
    options = {}
    default_options = {}

    def __init__(self, options=None):
        opts = dict(self.default_options)
        opts.update(options or {})
        self.options = _Options(opts)
        self.cpp_info = _CppInfo()
        self.required = []
        self.tool_required = []
        self.source_folder = "."
        self.package_folder = "."
        self.tested_reference_str = "libdelegate/0.1.0"

    def requires(self, ref, **kwargs):
        self.required.append((ref, kwargs))

    def tool_requires(self, ref, **kwargs):
        self.tool_required.append((ref, kwargs))

    def run(self, *args, **kwargs):
        raise RuntimeError("the stand-in runs nothing")
