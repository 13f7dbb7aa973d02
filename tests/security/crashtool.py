"""A plugin that crashes the engine: it raises an exception that is not an ``Exception``, the way
native code (pyo3's PanicException) does, so nothing on the way up turns it into a clean error."""


class EngineBug(BaseException):
    pass


raise EngineBug("the engine fell over on purpose")
