build-san/obj/tests/unit/test_mam.o: tests/unit/test_mam.c \
 tests/unit/../../mam/archive.h common/buf.h build-san/gen/meerkat.pb-c.h \
 common/xml.h common/buf.h tests/unit/../../mam/mam.h common/util.h
tests/unit/../../mam/archive.h:
common/buf.h:
build-san/gen/meerkat.pb-c.h:
common/xml.h:
common/buf.h:
tests/unit/../../mam/mam.h:
common/util.h:
