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

return await WeftCli.RunAsync(args, Console.Out, Console.Error);

// The ASP.NET Core framework reference (the CA service) brings a source generator that would make Program public.
internal partial class Program;
