"""A stand-in for ``google.colab``, for tests only: Google's own services cannot run here.

Only what Google provides is faked (Drive's mount); every call is recorded in the file named by
``FAKE_COLAB_LOG`` so that a test can check what the library asked of Colab.
"""
