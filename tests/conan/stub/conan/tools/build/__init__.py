def can_run(conanfile):
    return True
