using Weft.Cli;
using Weft.Demo;
using Weft.Harness;

const string usage = $"""
    weft-kit: Weft's test kit (never shipped with the agent).

    {DemoCommand.Usage}
      weft-kit app serve|send|rr|hold ...
          The test workload that runs in the demo's, the tests' and the benchmark's pods.
    """;

if (args is ["app", ..])
{
    // The workload shares the machine's cores with the agents it measures: its thread-pool workers do not spin waiting
    // for work (as the agent's), and a socket's completion runs its continuation on the socket engine's thread instead
    // of waking a worker (the workload never blocks in one). Beside two agents on 2 cores, the load suite's senders
    // and echo server made 170,000 context switches a second with the defaults; docs/benchmark.md has the figures.
    AppContext.SetData("System.Threading.ThreadPool.UnfairSemaphoreSpinLimit", 0);
    Environment.SetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", "1");
}

if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
{
    Console.WriteLine(usage);
    return args.Length == 0 ? 2 : 0;
}

try
{
    return args[0] switch
    {
        "demo" => await DemoCommand.RunAsync(new CommandLine(args.Skip(1))),
        "app" => await PeerApp.RunAsync(args[1..]),
        _ => throw new UsageException($"unknown command '{args[0]}'"),
    };
}
catch (UsageException e)
{
    Console.Error.WriteLine($"weft-kit: {e.Message}");
    Console.Error.WriteLine(usage);
    return 2;
}
