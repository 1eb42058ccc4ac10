"""A gadget module that cannot be imported in the gadget process (a dependency is missing): its target exists in
the source, so replay starts it, and the gadget's ModuleNotFoundError must come back as a named error."""

import no_such_gadget_dependency  # noqa: F401


def echo_images(connection) -> None:
    for _ in connection:
        pass
