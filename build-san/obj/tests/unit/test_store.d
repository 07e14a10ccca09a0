build-san/obj/tests/unit/test_store.o: tests/unit/test_store.c \
 common/cfg.h common/store.h common/cfg.h common/util.h
common/cfg.h:
common/store.h:
common/cfg.h:
common/util.h:
