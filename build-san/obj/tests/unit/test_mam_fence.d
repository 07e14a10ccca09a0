build-san/obj/tests/unit/test_mam_fence.o: tests/unit/test_mam_fence.c \
 tests/unit/../../mam/fence.h
tests/unit/../../mam/fence.h:
