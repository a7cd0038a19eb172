using Weft.Cli;

return await WeftCli.RunAsync(args, Console.Out, Console.Error);

// The ASP.NET Core framework reference (the CA service) brings a source generator that would make Program public.
internal partial class Program;
