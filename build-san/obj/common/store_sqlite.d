build-san/obj/common/store_sqlite.o: common/store_sqlite.c common/buf.h \
 common/log.h common/store_impl.h common/cfg.h common/store.h \
 common/util.h
common/buf.h:
common/log.h:
common/store_impl.h:
common/cfg.h:
common/store.h:
common/util.h:
