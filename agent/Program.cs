using Weft;
using Weft.Capture;
using Weft.Cli;

const string usage = $"""
    weft: a sidecarless service mesh node agent.

    {AgentCommand.Usage}
    {FlowsCommand.Usage}
    {ViewsCommand.Usage}
    {CaCommand.Usage}
    """;

if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
{
    Console.WriteLine(usage);
    return args.Length == 0 ? 2 : 0;
}

try
{
    var rest = args.Skip(1);
    return args[0] switch
    {
        "agent" => await AgentCommand.RunAgentAsync(new CommandLine(rest)),
        "uninstall" => AgentCommand.Uninstall(new CommandLine(rest)),
        "ca" => CaCommand.Run(new CommandLine(rest)),
        "flows" => await FlowsCommand.RunAsync(rest),
        "workloads" or "services" or "policies" or "certs" => await ViewsCommand.RunAsync(args[0], rest),
        _ => throw new UsageException($"unknown command '{args[0]}'"),
    };
}
catch (UsageException e)
{
    Console.Error.WriteLine($"weft: {e.Message}");
    Console.Error.WriteLine(usage);
    return 2;
}
catch (CaptureException e)
{
    // The kernel said no: one line naming the cause and the fix, no stack trace.
    Log.Error("capture", e.Message);
    return 1;
}
catch (Weft.Identity.IdentityException e)
{
    Log.Error("identity", e.Message);
    return 1;
}
catch (Weft.Inventory.InventoryLoadException e)
{
    Log.Error("inventory", e.Message);
    return 1;
}

/// <summary>Declared so the ASP.NET Core framework reference (the CA service) does not make the entry point public.</summary>
internal partial class Program;
