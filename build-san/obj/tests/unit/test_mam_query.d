build-san/obj/tests/unit/test_mam_query.o: tests/unit/test_mam_query.c \
 tests/unit/../../mam/archive.h common/buf.h build-san/gen/meerkat.pb-c.h \
 common/xml.h common/buf.h common/mamid.h common/cfg.h common/util.h
tests/unit/../../mam/archive.h:
common/buf.h:
build-san/gen/meerkat.pb-c.h:
common/xml.h:
common/buf.h:
common/mamid.h:
common/cfg.h:
common/util.h:
