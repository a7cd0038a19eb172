using Weft.Cli;

return await WeftCli.RunAsync(args, Console.Out, Console.Error);
