build-san/obj/common/store_stmts.o: common/store_stmts.c \
 common/store_impl.h common/cfg.h common/store.h
common/store_impl.h:
common/cfg.h:
common/store.h:
