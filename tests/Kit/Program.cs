using Weft.Cli;
using Weft.Demo;
using Weft.Harness;

const string usage = $"""
    weft-kit: Weft's test kit (never shipped with the agent).

    {DemoCommand.Usage}
      weft-kit app serve|send|rr|hold ...
          The test workload that runs in the demo's, the tests' and the benchmark's pods.
    """;

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
