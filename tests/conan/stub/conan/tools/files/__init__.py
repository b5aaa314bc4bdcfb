def copy(*args, **kwargs):
    return []
