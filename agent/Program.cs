using Weft.Cli;

// The node agent's thread-pool workers do not spin while they wait for work. With the default spin (70) the cpu
// part of the bench measured the two mTLS agents at 0.689 vCPU per 1,000 req/s, spin 0 at 0.475 (plaintext agents
// 0.560 and 0.320; nginx 0.219 and 0.232 beside them): on a node whose cores belong to the pods, spinning is CPU
// taken from them (docs/benchmark.md). Set before anything starts the thread pool, which reads it once; the CA and
// the gateway keep the runtime's default.
if (args is ["agent", ..])
{
    AppContext.SetData("System.Threading.ThreadPool.UnfairSemaphoreSpinLimit", 0);
}

// The gateway's socket completions run on the runtime's socket threads (one per core) instead of being queued to the
// thread pool: `weft-bench --suite gateway` measured 0.62-0.71 of nginx's requests/s with it, 0.54-0.63 without
// (means of five runs; docs/benchmark.md, "The gateway's socket completions"). Nothing may then block on a socket's
// path: the Kubernetes client's answers are read ahead (ReadAnswerAhead). The runtime reads the variable once, at the
// first socket, so it is set before anything runs; a value the user gave is kept.
if (args is ["gateway", ..] && Environment.GetEnvironmentVariable(Program.InlineCompletions) is null)
{
    Environment.SetEnvironmentVariable(Program.InlineCompletions, "1");
}

return await WeftCli.RunAsync(args, Console.Out, Console.Error);

// The ASP.NET Core framework reference (the CA service) brings a source generator that would make Program public.
internal partial class Program
{
    /// <summary>The runtime's switch that runs socket completions on its socket event threads.</summary>
    internal const string InlineCompletions = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";
}
