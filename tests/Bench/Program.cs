using Weft.Bench;
using Weft.Cli;

const string usage = $"""
    weft-bench: Weft's benchmarks (never shipped with the agent).

    {BenchCommand.Usage}
    {MetricsBenchmark.Usage}
    {ScaleBenchmark.Usage}
    {SoakBenchmark.Usage}
    {BenchCommand.LoadUsage}
    {CaBenchmark.Usage}
    {GatewayBenchmark.Usage}
    {IdleBenchmark.Usage}
    """;

// The bench only watches its children while they run, on the cores it measures: its thread-pool workers do not spin
// waiting for work (the load suite saw 36,000 context switches a second from this process with the default).
AppContext.SetData("System.Threading.ThreadPool.UnfairSemaphoreSpinLimit", 0);

if (args.Length > 0 && args[0] is "-h" or "--help" or "help")
{
    Console.WriteLine(usage);
    return 0;
}

try
{
    return args.Length > 0 && args[0] == "render-metrics"
        ? await MetricsBenchmark.RunAsync(new CommandLine(args.Skip(1)))
        : await BenchCommand.RunAsync(new CommandLine(args));
}
catch (UsageException e)
{
    Console.Error.WriteLine($"weft-bench: {e.Message}");
    Console.Error.WriteLine(usage);
    return 2;
}
