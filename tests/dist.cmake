# The communicator tests (test_dist.cc's MpiWorld.*) under mpirun with 2 and 3 ranks: the same
# bodies the thread fake runs, on MPI. Only with MOE_MPI. Oversubscribed on purpose (2 cores):
# --bind-to none and yield_when_idle keep waiting ranks from spinning the others to a crawl.
# Under MOE_SANITIZE the ranks skip LeakSanitizer (ASan and UBSan stay on): Open MPI 4.1 leaks
# what MPI_Init allocates, from components it has unloaded by exit, so no suppression can name it;
# the same collectives on the thread fake are leak-checked.
if(MOE_MPI)
  find_program(MOE_MPIRUN NAMES mpirun mpiexec REQUIRED)
  set(MOE_MPI_ENV OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
      OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
      LSAN_OPTIONS=detect_leaks=0)
  set(MOE_MPIRUN_ARGS --oversubscribe --bind-to none)
  foreach(np 2 3)
    add_test(NAME dist.mpi_collectives_np${np}
             COMMAND ${MOE_MPIRUN} -np ${np} ${MOE_MPIRUN_ARGS} $<TARGET_FILE:moe_test_dist> --gtest_filter=MpiWorld.*)
    set_tests_properties(dist.mpi_collectives_np${np} PROPERTIES TIMEOUT 60 ENVIRONMENT "${MOE_MPI_ENV}")
  endforeach()
endif()

# test_data_parallel.cc runs `mpirun -np W moe train` itself (it skips without MOE_MPIRUN)
if(MOE_MPI)
  target_compile_definitions(moe_test_data_parallel PRIVATE MOE_MPIRUN="${MOE_MPIRUN}")
  # test_ep_infer_cli.cc: mpirun -np P moe generate|bench|serve --expert-parallel P
  target_compile_definitions(moe_test_ep_infer_cli PRIVATE MOE_MPIRUN="${MOE_MPIRUN}")
endif()
